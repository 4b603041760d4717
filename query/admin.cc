// The admin calls of kvidx.v1.KvIndex: each becomes a typed command that the owning ingest
// worker executes (control/layout.h); the query process never writes the index.
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

#include "query/service.h"
#include "wire/vocabulary.h"

namespace kvidx::query {

using control::CopyField;
using index::Ld;

static_assert(static_cast<int>(control::AppliedKind::kStored) == v1::AppliedEvent::STORED &&
                  static_cast<int>(control::AppliedKind::kRemoved) == v1::AppliedEvent::REMOVED &&
                  static_cast<int>(control::AppliedKind::kCleared) == v1::AppliedEvent::CLEARED,
              "ring entries carry the proto's event kinds");

namespace {
grpc::Status TooLong(const char* what) {
  return Error(grpc::StatusCode::INVALID_ARGUMENT, "FIELD_TOO_LONG", what);
}
}  // namespace

grpc::Status KvIndexService::RunCommand(const control::Command& c, control::Answer* answer) {
  auto id = control_->Post(c);
  if (!id.ok()) {
    return Error(grpc::StatusCode::RESOURCE_EXHAUSTED, "CONTROL_BUSY",
                 std::string(id.status().message()));
  }
  auto r = control_->Await(*id, 5000);
  if (!r.ok()) {
    return Error(grpc::StatusCode::UNAVAILABLE, "NO_WORKER", std::string(r.status().message()));
  }
  *answer = std::move(*r);
  const control::CommandResult& res = answer->command.result;
  if (res.code != 0) {
    const std::string reason(control::FieldView(res.reason));
    return Error(static_cast<grpc::StatusCode>(res.code), reason.empty() ? "REFUSED" : reason,
                 std::string(control::FieldView(res.message)));
  }
  return grpc::Status::OK;
}

grpc::Status KvIndexService::RegisterPublisher(grpc::ServerContext*,
                                               const v1::RegisterPublisherRequest* req,
                                               v1::Pod* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  if (req->pod().empty() || req->model().empty() || req->endpoint().empty()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "MISSING_FIELD",
                 "pod, model and endpoint are required");
  }
  const std::string dialect = req->dialect().empty() ? "auto" : req->dialect();
  if (!wire::ParseDialect(dialect)) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "UNKNOWN_DIALECT", dialect);
  }
  if (req->bind() && config_.allow_rpc_bind) {
    if (absl::Status st = config::CheckBindEndpoint(config_, req->endpoint()); !st.ok())
      return Error(grpc::StatusCode::PERMISSION_DENIED, "BIND_NOT_ALLOWED",
                   std::string(st.message()));
  }
  if (!config_.allow_rpc_bind) {
    // An RPC must not make kvidx bind a socket (ipc:// binds unlink the path first: the
    // segment's own name among them) nor connect to anything but TCP.
    if (req->bind()) {
      return Error(grpc::StatusCode::PERMISSION_DENIED, "BIND_NOT_ALLOWED",
                   "RegisterPublisher may not bind a socket (allow_rpc_bind is off)");
    }
    for (const std::string& ep : {req->endpoint(), req->replay_endpoint()}) {
      if (!ep.empty() && ep.rfind("tcp://", 0) != 0) {
        return Error(grpc::StatusCode::PERMISSION_DENIED, "ENDPOINT_NOT_ALLOWED",
                     absl::StrCat("only tcp:// endpoints may be registered by RPC, not ", ep));
      }
    }
  }
  control::Command c{};
  c.op = static_cast<uint32_t>(control::CommandOp::kRegister);
  c.worker = control::kAnyWorker;
  control::CommandArgs& a = c.args;
  a.dp_rank = static_cast<int32_t>(req->dp_rank());
  a.quota_pairs = req->quota_pairs();
  a.publisher_flags = (req->bind() ? uint32_t{index::kBindSubscriber} : 0u) |
                      (req->private_engine_hashes() ? uint32_t{index::kPrivateEngineHashes} : 0u);
  if (!CopyField(a.pod, req->pod()) || !CopyField(a.model, req->model()) ||
      !CopyField(a.endpoint, req->endpoint()) ||
      !CopyField(a.replay_endpoint, req->replay_endpoint()) || !CopyField(a.topic, req->topic()) ||
      !CopyField(a.dialect, dialect)) {
    return TooLong("a field is too long");
  }
  control::Answer r;
  grpc::Status st = RunCommand(c, &r);
  if (!st.ok()) return st;
  if (auto id = index_->FindPublisher(req->pod(), req->dp_rank())) FillPod(*id, resp);
  return grpc::Status::OK;
}

// A command for the worker that owns publisher (pod, dp_rank); NOT_FOUND if there is none.
grpc::Status KvIndexService::CommandForPod(const std::string& pod, uint32_t dp_rank,
                                           control::CommandOp op, control::Command* c) const {
  auto id = index_->FindPublisher(pod, dp_rank);
  if (!id) return Error(grpc::StatusCode::NOT_FOUND, "UNKNOWN_POD", pod);
  *c = control::Command{};
  c->op = static_cast<uint32_t>(op);
  c->worker = index_->publisher_slot(*id)->id.worker;
  c->args.dp_rank = static_cast<int32_t>(dp_rank);
  if (!CopyField(c->args.pod, pod)) return TooLong("pod");
  return grpc::Status::OK;
}

grpc::Status KvIndexService::UnregisterPublisher(grpc::ServerContext*,
                                                 const v1::UnregisterPublisherRequest* req,
                                                 v1::UnregisterPublisherResponse* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  control::Command c;
  grpc::Status found =
      CommandForPod(req->pod(), req->dp_rank(), control::CommandOp::kUnregister, &c);
  if (!found.ok()) return found;
  control::Answer r;
  grpc::Status st = RunCommand(c, &r);
  if (!st.ok()) return st;
  resp->set_pairs_dropped(r.command.result.pairs);
  return grpc::Status::OK;
}

grpc::Status KvIndexService::ClearPod(const v1::PodRef& pod, v1::ClearResponse* resp) {
  control::Command c{};
  c.op = static_cast<uint32_t>(control::CommandOp::kClearPod);
  c.args.dp_rank = pod.dp_rank();
  if (!CopyField(c.args.pod, pod.pod())) return TooLong("pod");
  // Each owning worker clears its own publishers of that pod.
  std::set<uint32_t> owners;
  for (auto id : index_->ActivePublishers()) {
    const index::PublisherSlot* s = index_->publisher_slot(id);
    if (s != nullptr && pod.pod() == control::FieldView(s->id.pod) &&
        (c.args.dp_rank < 0 || static_cast<uint32_t>(c.args.dp_rank) == s->id.dp_rank)) {
      owners.insert(s->id.worker);
    }
  }
  if (owners.empty()) return Error(grpc::StatusCode::NOT_FOUND, "UNKNOWN_POD", pod.pod());
  for (uint32_t w : owners) {
    c.worker = w;
    control::Answer r;
    grpc::Status st = RunCommand(c, &r);
    if (!st.ok()) return st;
    resp->set_publishers_cleared(resp->publishers_cleared() + r.command.result.publishers);
    resp->set_pairs_cleared(resp->pairs_cleared() + r.command.result.pairs);
  }
  return grpc::Status::OK;
}

grpc::Status KvIndexService::Clear(grpc::ServerContext*, const v1::ClearRequest* req,
                                   v1::ClearResponse* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  control::Command c{};
  switch (req->scope_case()) {
    case v1::ClearRequest::kPod:
      return ClearPod(req->pod(), resp);
    case v1::ClearRequest::kNamespace:
      c.op = static_cast<uint32_t>(control::CommandOp::kClearNamespace);
      if (!CopyField(c.args.model, req->namespace_().model()) ||
          !CopyField(c.args.lora_name, req->namespace_().lora_name())) {
        return TooLong("namespace");
      }
      break;
    case v1::ClearRequest::kAll:
      if (!req->all()) {
        return Error(grpc::StatusCode::INVALID_ARGUMENT, "NO_SCOPE", "all must be true");
      }
      c.op = static_cast<uint32_t>(control::CommandOp::kClearAll);
      break;
    default:
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "NO_SCOPE",
                   "clear needs pod, namespace or all");
  }
  c.worker = control::kAnyWorker;
  control::Answer r;
  grpc::Status st = RunCommand(c, &r);
  if (!st.ok()) return st;
  resp->set_blocks_cleared(r.command.result.blocks);
  return grpc::Status::OK;
}

namespace {
void FillSequence(const control::SequenceRecord& rec, v1::Sequence* s) {
  s->set_sequence_id(rec.sequence_id);
  s->set_finished(rec.finished != 0);
  s->set_succeeded(rec.succeeded != 0);
  s->set_stored_blocks(rec.stored_blocks);
  s->set_request_id(
      std::string(rec.request_id, std::min<size_t>(rec.request_id_size, sizeof(rec.request_id))));
}
}  // namespace

grpc::Status KvIndexService::ListSequences(grpc::ServerContext*,
                                           const v1::ListSequencesRequest* req,
                                           v1::ListSequencesResponse* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  control::Command c;
  grpc::Status found =
      CommandForPod(req->pod(), req->dp_rank(), control::CommandOp::kListSequences, &c);
  if (!found.ok()) return found;
  control::Answer r;
  grpc::Status st = RunCommand(c, &r);
  if (!st.ok()) return st;
  for (size_t at = 0; at + sizeof(control::SequenceRecord) <= r.payload.size();
       at += sizeof(control::SequenceRecord)) {
    control::SequenceRecord rec;
    std::memcpy(&rec, r.payload.data() + at, sizeof(rec));
    v1::Sequence* s = resp->add_sequences();
    FillSequence(rec, s);
    s->set_pod(req->pod());
    s->set_dp_rank(req->dp_rank());
  }
  resp->set_truncated(r.command.result.truncated != 0);
  return grpc::Status::OK;
}

grpc::Status KvIndexService::GetSequence(grpc::ServerContext*, const v1::GetSequenceRequest* req,
                                         v1::Sequence* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  control::Command c;
  grpc::Status found =
      CommandForPod(req->pod(), req->dp_rank(), control::CommandOp::kGetSequence, &c);
  if (!found.ok()) return found;
  c.args.sequence_id = req->sequence_id();
  control::Answer r;
  grpc::Status st = RunCommand(c, &r);
  if (!st.ok()) return st;
  if (r.payload.size() < sizeof(control::SequenceRecord) ||
      (r.payload.size() - sizeof(control::SequenceRecord)) % sizeof(uint64_t) != 0) {
    return Error(grpc::StatusCode::INTERNAL, "BAD_WORKER_ANSWER", "unreadable sequence");
  }
  control::SequenceRecord rec;
  std::memcpy(&rec, r.payload.data(), sizeof(rec));
  FillSequence(rec, resp);
  for (size_t at = sizeof(rec); at < r.payload.size(); at += sizeof(uint64_t)) {
    uint64_t key;
    std::memcpy(&key, r.payload.data() + at, sizeof(key));
    resp->add_block_keys(key);
  }
  resp->set_pod(req->pod());
  resp->set_dp_rank(req->dp_rank());
  return grpc::Status::OK;
}

}  // namespace kvidx::query
