// The HTTP listener's routes (query/http_server.h): kvidx's own, in the canonical protobuf JSON
// mapping of the gRPC messages, and the AIBrix KV event sync ones in the shape that API defines.
#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "query/errors.h"
#include "query/http_server.h"
#include "shared/clock.h"

namespace kvidx::query {

using index::Ld;
using nlohmann::json;

namespace {

HttpResponse Json(int status, const json& body) { return {status, body.dump()}; }

HttpResponse ProtoJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return {200, out};
}

HttpResponse Answer(const grpc::Status& st, const google::protobuf::Message& m) {
  return st.ok() ? ProtoJson(m) : ErrorResponse(st);
}

HttpResponse NotFound(const HttpRequest& r) {
  return ErrorResponse(Error(grpc::StatusCode::NOT_FOUND, "NO_ROUTE",
                             absl::StrCat("no route ", r.method, " ", r.path)));
}

HttpResponse WrongMethod(const HttpRequest& r) {
  HttpResponse res = ErrorResponse(Error(grpc::StatusCode::INVALID_ARGUMENT, "METHOD_NOT_ALLOWED",
                                         absl::StrCat(r.method, " is not allowed on ", r.path)));
  res.status = 405;
  return res;
}

double UnixSeconds(int64_t wall_ns) { return static_cast<double>(wall_ns) / 1e9; }

// The sequence-id publishers (the only ones with sequences), and the latest event of any.
struct Publishers {
  std::vector<const index::PublisherSlot*> seqid;
  int64_t last_event_wall_ns = 0;
};
Publishers ScanPublishers(const index::PrefixIndex& idx) {
  Publishers p;
  for (index::PublisherId id : idx.ActivePublishers()) {
    const index::PublisherSlot* s = idx.publisher_slot(id);
    if (s == nullptr) continue;
    p.last_event_wall_ns = std::max(p.last_event_wall_ns, Ld(s->ingest.last_event_wall_ns));
    if (std::string_view(s->id.dialect, strnlen(s->id.dialect, sizeof(s->id.dialect))) == "seqid")
      p.seqid.push_back(s);
  }
  return p;
}

std::string PodOf(const index::PublisherSlot& s) {
  return std::string(s.id.pod, strnlen(s.id.pod, sizeof(s.id.pod)));
}

uint32_t BlockSizeOf(const index::PrefixIndex& idx, const index::PublisherSlot& s) {
  const index::NamespaceSlot* ns = idx.namespace_slot(static_cast<index::NamespaceId>(s.id.ns));
  return ns == nullptr ? 0 : ns->block_size;
}

// A sequence-id publisher's sequences, read from its owning worker (the ListSequences RPC).
grpc::Status SequencesOf(KvIndexService* service, const index::PublisherSlot& s,
                         v1::ListSequencesResponse* resp) {
  grpc::ServerContext ctx;
  v1::ListSequencesRequest req;
  req.set_pod(PodOf(s));
  req.set_dp_rank(s.id.dp_rank);
  return service->ListSequences(&ctx, &req, resp);
}

json AibrixStats(KvIndexService* service, const v1::StatsResponse& st, const Publishers& pubs) {
  uint64_t sequences = 0;
  for (const index::PublisherSlot* s : pubs.seqid) {
    v1::ListSequencesResponse resp;
    if (SequencesOf(service, *s, &resp).ok()) sequences += resp.sequences_size();
  }
  return {{"total_sequences", sequences},
          {"total_blocks", st.blocks()},
          {"total_tokens", st.tokens()},
          {"hit_rate", st.hit_rate()},
          {"eviction_count", st.evictions()},
          {"last_updated", static_cast<int64_t>(UnixSeconds(pubs.last_event_wall_ns))}};
}

HttpResponse AibrixStatus(KvIndexService* service) {
  v1::StatsResponse st;
  service->FillStats(&st);
  const Publishers pubs = ScanPublishers(service->index());
  return Json(200, {{"enabled", st.enabled()},
                    {"healthy", st.healthy()},
                    {"stats", AibrixStats(service, st, pubs)}});
}

HttpResponse AibrixSequences(KvIndexService* service) {
  const Publishers pubs = ScanPublishers(service->index());
  json list = json::array();
  bool truncated = false;
  for (const index::PublisherSlot* s : pubs.seqid) {
    v1::ListSequencesResponse resp;
    grpc::Status st = SequencesOf(service, *s, &resp);
    if (!st.ok()) return ErrorResponse(st);
    truncated |= resp.truncated();
    const uint32_t bs = BlockSizeOf(service->index(), *s);
    for (const v1::Sequence& q : resp.sequences()) {
      list.push_back(
          {{"id", q.sequence_id()},
           {"token_count", uint64_t{q.stored_blocks()} * bs},
           {"block_count", q.stored_blocks()},
           {"last_accessed", static_cast<int64_t>(UnixSeconds(Ld(s->ingest.last_event_wall_ns)))},
           {"pod", q.pod()},
           {"dp_rank", q.dp_rank()},
           {"request_id", q.request_id()},
           {"finished", q.finished()}});
    }
  }
  return Json(200, {{"sequences", list}, {"truncated", truncated}});
}

HttpResponse AibrixSequence(KvIndexService* service, const HttpRequest& r, std::string_view id) {
  int64_t seq = 0;
  if (!absl::SimpleAtoi(std::string(id), &seq)) {
    return ErrorResponse(Error(grpc::StatusCode::INVALID_ARGUMENT, "BAD_SEQUENCE_ID",
                               absl::StrCat("'", std::string(id), "' is not a sequence id")));
  }
  const auto pod = r.query.find("pod");
  for (const index::PublisherSlot* s : ScanPublishers(service->index()).seqid) {
    if (pod != r.query.end() && pod->second != PodOf(*s)) continue;
    grpc::ServerContext ctx;
    v1::GetSequenceRequest req;
    req.set_pod(PodOf(*s));
    req.set_dp_rank(s->id.dp_rank);
    req.set_sequence_id(seq);
    v1::Sequence q;
    if (!service->GetSequence(&ctx, &req, &q).ok()) continue;
    json blocks = json::array(), keys = json::array();
    for (int i = 0; i < q.block_keys_size(); ++i) {
      if (q.block_keys(i) == 0) continue;
      blocks.push_back(i);
      keys.push_back(absl::StrFormat("%016x", q.block_keys(i)));
    }
    const auto at = static_cast<int64_t>(UnixSeconds(Ld(s->ingest.last_event_wall_ns)));
    // kvidx keeps block keys, not token ids: tokens is empty; access is not tracked per
    // sequence (created_at and last_accessed are the publisher's last event).
    return Json(200,
                {{"sequence_id", q.sequence_id()},
                 {"tokens", json::array()},
                 {"blocks", blocks},
                 {"block_keys", keys},
                 {"pod", q.pod()},
                 {"dp_rank", q.dp_rank()},
                 {"metadata", {{"created_at", at}, {"last_accessed", at}, {"access_count", 0}}}});
  }
  return ErrorResponse(
      Error(grpc::StatusCode::NOT_FOUND, "UNKNOWN_SEQUENCE", absl::StrCat("no sequence ", seq)));
}

// A POST route whose body is the JSON of a gRPC request, answered by `Method`.
template <typename Req, typename Resp, typename Method>
HttpResponse JsonCall(KvIndexService* service, const HttpRequest& r, Method method) {
  Req req;
  google::protobuf::util::JsonParseOptions o;
  auto parsed = google::protobuf::util::JsonStringToMessage(r.body, &req, o);
  if (!parsed.ok()) {
    return ErrorResponse(
        Error(grpc::StatusCode::INVALID_ARGUMENT, "BAD_JSON", std::string(parsed.message())));
  }
  grpc::ServerContext ctx;
  Resp resp;
  return Answer((service->*method)(&ctx, &req, &resp), resp);
}

HttpResponse Pods(KvIndexService* service, const HttpRequest& r, std::string_view pod) {
  grpc::ServerContext ctx;
  if (pod.empty()) {
    v1::ListPodsRequest req;
    v1::ListPodsResponse resp;
    return Answer(service->ListPods(&ctx, &req, &resp), resp);
  }
  v1::GetPodRequest req;
  req.set_pod(std::string(pod));
  uint32_t rank = 0;
  if (auto it = r.query.find("dp_rank");
      it != r.query.end() && !absl::SimpleAtoi(it->second, &rank))
    return ErrorResponse(Error(grpc::StatusCode::INVALID_ARGUMENT, "BAD_DP_RANK", it->second));
  req.set_dp_rank(rank);
  v1::Pod resp;
  return Answer(service->GetPod(&ctx, &req, &resp), resp);
}

bool Prefix(std::string_view path, std::string_view prefix, std::string_view* rest) {
  if (path.substr(0, prefix.size()) != prefix || path.size() == prefix.size()) return false;
  *rest = path.substr(prefix.size());
  return rest->find('/') == std::string_view::npos;
}

}  // namespace

HttpResponse ErrorResponse(const grpc::Status& st) {
  v1::ErrorDetail d;
  d.ParseFromString(st.error_details());
  static constexpr const char* kNames[] = {"OK",
                                           "CANCELLED",
                                           "UNKNOWN",
                                           "INVALID_ARGUMENT",
                                           "DEADLINE_EXCEEDED",
                                           "NOT_FOUND",
                                           "ALREADY_EXISTS",
                                           "PERMISSION_DENIED",
                                           "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION",
                                           "ABORTED",
                                           "OUT_OF_RANGE",
                                           "UNIMPLEMENTED",
                                           "INTERNAL",
                                           "UNAVAILABLE",
                                           "DATA_LOSS",
                                           "UNAUTHENTICATED"};
  const int code = static_cast<int>(st.error_code());
  std::string message = st.error_message();
  if (const std::string prefix = d.reason() + ": "; message.rfind(prefix, 0) == 0)
    message = message.substr(prefix.size());
  return Json(HttpStatusOf(st.error_code()),
              {{"error",
                {{"code", d.code()},
                 {"reason", d.reason()},
                 {"message", message},
                 {"status", code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN"}}}});
}

EventFormat WebSocketRoute(const std::string& path) {
  if (path == "/v1/events") return EventFormat::kProto;
  if (path == "/api/v1/cache/events") return EventFormat::kAibrix;
  return EventFormat::kNone;
}

std::string EventMessage(const KvIndexService& service, const v1::WatchEvent& ev,
                         EventFormat format) {
  if (format == EventFormat::kProto) return ProtoJson(ev).body;
  static constexpr const char* kTypes[] = {"unknown", "block_stored", "block_removed",
                                           "cache_cleared"};
  json msg;
  if (ev.has_stats()) {
    msg["type"] = "stats_update";
    msg["timestamp"] = UnixSeconds(WallNanos());
    const Publishers pubs = ScanPublishers(service.index());
    msg["data"] = {{"total_blocks", ev.stats().blocks()},
                   {"total_tokens", ev.stats().tokens()},
                   {"hit_rate", ev.stats().hit_rate()},
                   {"eviction_count", ev.stats().evictions()},
                   {"last_updated", static_cast<int64_t>(UnixSeconds(pubs.last_event_wall_ns))}};
  } else {
    const v1::AppliedEvent& a = ev.applied();
    msg["type"] = kTypes[std::clamp(static_cast<int>(a.kind()), 0, 3)];
    msg["timestamp"] = UnixSeconds(a.wall_time_ns());
    // The rings carry what was applied, not the engine's sequence or token ids: sequence_id is
    // -1 and block_numbers/block_token_ids are empty; kvidx's fields say what was applied.
    msg["data"] = {{"sequence_id", -1},
                   {"block_numbers", json::array()},
                   {"pod", a.pod()},
                   {"dp_rank", a.dp_rank()},
                   {"model", a.model()},
                   {"blocks", a.blocks()},
                   {"first_block_key", absl::StrFormat("%016x", a.first_block_key())}};
    if (a.kind() == v1::AppliedEvent::STORED) msg["data"]["block_token_ids"] = json::array();
  }
  msg["missed"] = ev.missed();
  return msg.dump();
}

HttpResponse Route(KvIndexService* service, const HttpRequest& r) {
  const bool get = r.method == "GET", post = r.method == "POST";
  std::string_view rest;
  if (r.path == "/healthz" || r.path == "/health") {
    if (!get) return WrongMethod(r);
    v1::StatsResponse st;
    service->FillStats(&st);
    return Json(st.healthy() ? 200 : 503, {{"status", st.healthy() ? "SERVING" : "NOT_SERVING"}});
  }
  if (r.path == "/v1/lookup") {
    return post ? JsonCall<v1::LookupRequest, v1::LookupResponse>(service, r,
                                                                  &KvIndexService::Lookup)
                : WrongMethod(r);
  }
  if (r.path == "/v1/announce") {
    return post ? JsonCall<v1::AnnounceRequest, v1::AnnounceResponse>(service, r,
                                                                      &KvIndexService::Announce)
                : WrongMethod(r);
  }
  if (r.path == "/v1/stats") {
    if (!get) return WrongMethod(r);
    v1::StatsResponse st;
    service->FillStats(&st);
    return ProtoJson(st);
  }
  if (r.path == "/v1/pods") return get ? Pods(service, r, "") : WrongMethod(r);
  if (Prefix(r.path, "/v1/pods/", &rest)) return get ? Pods(service, r, rest) : WrongMethod(r);
  if (r.path == "/api/v1/cache/status") return get ? AibrixStatus(service) : WrongMethod(r);
  if (r.path == "/api/v1/cache/sequences") return get ? AibrixSequences(service) : WrongMethod(r);
  if (Prefix(r.path, "/api/v1/cache/sequences/", &rest))
    return get ? AibrixSequence(service, r, rest) : WrongMethod(r);
  if (r.path == "/api/v1/cache/clear" || r.path == "/v1/clear") {
    if (!post) return WrongMethod(r);
    service->CountPermissionDenied();
    return ErrorResponse(Error(grpc::StatusCode::PERMISSION_DENIED, "ADMIN_ONLY",
                               "clearing is served on the admin surfaces only (kvidxctl clear "
                               "on the admin socket)"));
  }
  if (WebSocketRoute(r.path) != EventFormat::kNone) {
    HttpResponse res = ErrorResponse(Error(grpc::StatusCode::INVALID_ARGUMENT, "WEBSOCKET_ONLY",
                                           r.path + " is a WebSocket route"));
    res.status = 426;
    return res;
  }
  return NotFound(r);
}

}  // namespace kvidx::query
