// Announce and the predicted blocks of lookups (query/predictions.h holds the table).
#include <algorithm>

#include "absl/strings/str_cat.h"

#include "query/service.h"
#include "shared/clock.h"

namespace kvidx::query {

grpc::Status KvIndexService::Announce(grpc::ServerContext*, const v1::AnnounceRequest* req,
                                      v1::AnnounceResponse* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  if (req->pod().dp_rank() < 0) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "ONE_PUBLISHER",
                 "an announcement names one publisher: give the pod's dp_rank");
  }
  auto p = index_->FindPublisher(req->pod().pod(), static_cast<uint32_t>(req->pod().dp_rank()));
  if (!p) {
    return Error(grpc::StatusCode::NOT_FOUND, "UNKNOWN_POD",
                 absl::StrCat("no publisher ", req->pod().pod(), "/", req->pod().dp_rank()));
  }
  if (req->query().input_case() == v1::LookupQuery::kKvbmHashes) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "KVBM_NOT_ANNOUNCEABLE",
                 "announce a prompt by tokens, keys or text; KVBM lineage hashes are sparse");
  }
  std::vector<index::BlockKey> keys;
  std::vector<uint32_t> depths;
  v1::LookupResult facts;
  if (grpc::Status st = QueryKeys(req->query(), &keys, &depths, &facts); !st.ok()) return st;
  if (!facts.namespace_known()) {
    return Error(grpc::StatusCode::NOT_FOUND, "UNKNOWN_NAMESPACE",
                 absl::StrCat("no publisher has stored blocks of model '",
                              req->query().namespace_().model(), "' yet"));
  }
  resp->set_prompt_blocks(static_cast<uint32_t>(keys.size()));
  absl::StatusOr<Predictions::Announced> a =
      predictions_->Announce(*p, std::move(keys), req->ttl_ms());
  if (!a.ok()) {
    return Error(grpc::StatusCode::RESOURCE_EXHAUSTED, "PREDICTIONS_FULL",
                 std::string(a.status().message()));
  }
  resp->set_already_held(a->already_held);
  resp->set_predicted_blocks(a->predicted);
  return grpc::Status::OK;
}

void KvIndexService::AddPredicted(const std::vector<index::BlockKey>& keys,
                                  const index::LookupResult& r, v1::LookupResult* out,
                                  CallPods* pods) const {
  if (keys.empty()) return;
  // The answer's pods, in the order the matches were written (slots that vanished skipped).
  std::vector<index::PublisherId> matched;
  for (const auto& m : r.matches) {
    if (index_->publisher_slot(m.publisher) != nullptr) matched.push_back(m.publisher);
  }
  v1::MatchColumns* cols = pods != nullptr ? out->mutable_columns() : nullptr;
  const int written = cols != nullptr ? cols->pod_size() : out->matches_size();
  for (int i = 0; i < written && i < static_cast<int>(matched.size()); ++i) {
    if (cols != nullptr) {
      cols->add_predicted_blocks(predictions_->Extend(matched[i], keys, cols->matched_blocks(i)));
    } else {
      v1::PodMatch* pm = out->mutable_matches(i);
      pm->set_predicted_blocks(predictions_->Extend(matched[i], keys, pm->matched_blocks()));
    }
  }
  const int64_t now = WallNanos();
  for (index::PublisherId p : predictions_->AnnouncedWith(keys[0])) {
    if (std::find(matched.begin(), matched.end(), p) != matched.end()) continue;
    const index::PublisherSlot* s = index_->publisher_slot(p);
    if (s == nullptr) continue;
    const uint32_t predicted = predictions_->Extend(p, keys, 0);
    if (cols != nullptr) {
      cols->add_pod(PodEntry(*pods, p, *s, now));
      cols->add_matched_blocks(0);
      cols->add_gpu_blocks(0);
      cols->add_cpu_blocks(0);
      cols->add_disk_blocks(0);
      cols->add_predicted_blocks(predicted);
      continue;
    }
    v1::PodMatch* pm = out->add_matches();
    pm->set_pod(std::string(control::FieldView(s->id.pod)));
    pm->set_dp_rank(s->id.dp_rank);
    pm->set_predicted_blocks(predicted);
    FillFreshness(*s, pm->mutable_freshness(), now);
  }
}

}  // namespace kvidx::query
