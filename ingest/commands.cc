// The worker's side of the admin commands (control/layout.h): one executor per operation.
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

#include "ingest/kvbm_instances.h"
#include "ingest/worker.h"
#include "shared/status.h"

namespace kvidx::ingest {

using control::CommandArgs;
using control::CommandOp;
using control::CommandResult;
using control::FieldView;

void Worker::ServeCommands() {
  control_->Serve(worker_,
                  [this](control::Command& c, std::span<char> payload) { Execute(c, payload); });
}

namespace {

// A refusal's reason (query/errors.h) in the command's result; returns `st`.
absl::Status Refuse(CommandResult& r, const char* reason, absl::Status st) {
  (void)control::CopyField(r.reason, reason);
  return st;
}

// The reason of a refusal no executor named.
const char* DefaultReason(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kResourceExhausted:
      return "CAPACITY";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_COMMAND";
    default:
      return "WORKER_ERROR";
  }
}

}  // namespace

void Worker::Execute(control::Command& c, std::span<char> payload) {
  absl::Status st;
  switch (static_cast<CommandOp>(c.op)) {
    case CommandOp::kRegister:
      st = ExecuteRegister(c.args, c.result);
      break;
    case CommandOp::kUnregister:
    case CommandOp::kClearPod:
      st = ExecuteDropPod(static_cast<CommandOp>(c.op) == CommandOp::kUnregister, c.args, c.result);
      break;
    case CommandOp::kListSequences:
    case CommandOp::kGetSequence:
      st = ExecuteSequences(static_cast<CommandOp>(c.op) == CommandOp::kGetSequence, c.args,
                            c.result, payload);
      break;
    case CommandOp::kClearNamespace:
    case CommandOp::kClearAll:
      st = ExecuteClearNamespaces(static_cast<CommandOp>(c.op) == CommandOp::kClearAll, c.args,
                                  c.result);
      break;
    default:
      st = absl::InvalidArgumentError(absl::StrCat("unknown command ", c.op));
  }
  c.result.code = static_cast<int32_t>(st.code());
  if (!st.ok() && c.result.reason[0] == '\0')
    (void)control::CopyField(c.result.reason, DefaultReason(st.code()));
  const std::string message(st.message());
  (void)control::CopyField(c.result.message,
                           std::string_view(message).substr(0, sizeof(c.result.message) - 1));
}

absl::Status Worker::ExecuteRegister(const CommandArgs& a, CommandResult& r) {
  const std::string model(FieldView(a.model));
  auto ns = index_->FindNamespace(model, "");
  if (!ns) {
    return Refuse(
        r, "UNKNOWN_MODEL",
        absl::FailedPreconditionError(absl::StrCat("model '", model, "' is not configured")));
  }
  config::PublisherConfig pc;
  pc.pod = FieldView(a.pod);
  pc.dp_rank = static_cast<uint32_t>(std::max(0, a.dp_rank));
  pc.quota_pairs = a.quota_pairs;
  pc.private_engine_hashes = (a.publisher_flags & index::kPrivateEngineHashes) != 0;
  pc.bind = (a.publisher_flags & index::kBindSubscriber) != 0;
  pc.endpoint = FieldView(a.endpoint);
  pc.replay_endpoint = FieldView(a.replay_endpoint);
  pc.topic = FieldView(a.topic);
  pc.dialect = ParseDialect(FieldView(a.dialect)).value_or(Dialect::kAuto);
  // The control area is writable by the query's user: the worker applies the allow-list itself.
  if (pc.bind) {
    if (absl::Status st = config::CheckBindEndpoint(config_, pc.endpoint); !st.ok())
      return Refuse(r, "BIND_NOT_ALLOWED", st);
  }
  absl::Status st =
      index_->RegisterPublisher(config::PublisherSpecFor(pc, *ns, config_.workers)).status();
  if (absl::IsResourceExhausted(st)) return Refuse(r, "PUBLISHER_TABLE_FULL", st);
  KVIDX_RETURN_IF_ERROR(st);
  r.publishers = 1;
  return absl::OkStatus();
}

absl::Status Worker::ExecuteDropPod(bool unregister, const CommandArgs& a, CommandResult& r) {
  const std::string_view pod = FieldView(a.pod);
  for (index::PublisherId id : index_->ActivePublishers()) {
    const index::PublisherSlot* s = index_->publisher_slot(id);
    // Only this worker's own publishers: another worker may be applying to its own right now,
    // and the publisher's journal and applied-op counter have one writer, its owner.
    // A pod's KVBM instances past the first ("<pod>#<n>", no endpoint of their own) go with it.
    const bool instance = s != nullptr && InstanceNumberOf(*s, pod).has_value();
    if (s == nullptr || (pod != FieldView(s->id.pod) && !instance) || s->id.worker != worker_ ||
        (a.dp_rank >= 0 && s->id.dp_rank != static_cast<uint32_t>(a.dp_rank))) {
      continue;
    }
    r.pairs += s->index.pairs;
    applier_->Forget(id);
    KVIDX_RETURN_IF_ERROR(unregister ? index_->UnregisterPublisher(id)
                                     : index_->ClearPublisher(id));
    ++r.publishers;
  }
  if (r.publishers == 0)
    return Refuse(r, "UNKNOWN_POD",
                  absl::NotFoundError(absl::StrCat("no publisher ", std::string(pod))));
  return absl::OkStatus();
}

namespace {
control::SequenceRecord RecordOf(int64_t id, const SequenceState& s) {
  control::SequenceRecord rec{};
  rec.sequence_id = id;
  rec.finished = s.finished ? 1 : 0;
  rec.succeeded = s.succeeded ? 1 : 0;
  for (auto k : s.blocks) rec.stored_blocks += k != 0;
  rec.request_id_size =
      static_cast<uint32_t>(std::min(s.request_id.size(), sizeof(rec.request_id)));
  std::memcpy(rec.request_id, s.request_id.data(), rec.request_id_size);
  return rec;
}
}  // namespace

absl::Status Worker::ExecuteSequences(bool one, const CommandArgs& a, CommandResult& r,
                                      std::span<char> payload) {
  const std::string pod(FieldView(a.pod));
  auto id = index_->FindPublisher(pod, static_cast<uint32_t>(std::max(0, a.dp_rank)));
  if (!id) return Refuse(r, "UNKNOWN_POD", absl::NotFoundError(absl::StrCat("no publisher ", pod)));
  const auto* seqs = applier_->sequences(*id);
  size_t used = 0;
  auto put = [&](const void* p, size_t n) {
    if (used + n > payload.size()) {
      r.truncated = 1;
      return false;
    }
    std::memcpy(payload.data() + used, p, n);
    used += n;
    return true;
  };
  if (!one) {
    if (seqs != nullptr) {
      for (const auto& [seq_id, s] : *seqs) {
        control::SequenceRecord rec = RecordOf(seq_id, s);
        if (!put(&rec, sizeof(rec))) break;
      }
    }
  } else {
    auto it = seqs == nullptr ? decltype(seqs->end()){} : seqs->find(a.sequence_id);
    if (seqs == nullptr || it == seqs->end()) {
      return Refuse(r, "UNKNOWN_SEQUENCE",
                    absl::NotFoundError(absl::StrCat("no sequence ", a.sequence_id, " on ", pod)));
    }
    control::SequenceRecord rec = RecordOf(it->first, it->second);
    put(&rec, sizeof(rec));
    for (uint64_t k : it->second.blocks) {
      if (!put(&k, sizeof(k))) break;
    }
  }
  r.payload_size = static_cast<uint32_t>(used);
  return absl::OkStatus();
}

absl::Status Worker::ExecuteClearNamespaces(bool all, const CommandArgs& a, CommandResult& r) {
  std::vector<index::NamespaceId> targets;
  if (all) {
    targets = index_->ActiveNamespaces();
  } else {
    auto ns = index_->FindNamespace(FieldView(a.model), FieldView(a.lora_name));
    if (!ns) {
      return Refuse(
          r, "UNKNOWN_NAMESPACE",
          absl::NotFoundError(absl::StrCat("no namespace ", std::string(FieldView(a.model)), "/",
                                           std::string(FieldView(a.lora_name)))));
    }
    targets.push_back(*ns);
  }
  for (auto ns : targets) {
    auto dropped = index_->ClearNamespace(ns, heartbeat_);
    if (dropped.ok()) r.blocks += *dropped;
  }
  // What this worker keeps in memory about its publishers' blocks (sequence tables, adapter
  // namespaces) no longer holds for the cleared namespaces.
  for (index::PublisherId id : index_->ActivePublishers()) {
    const index::PublisherSlot* s = index_->publisher_slot(id);
    if (s == nullptr || s->id.worker != worker_) continue;
    if (std::find(targets.begin(), targets.end(), static_cast<index::NamespaceId>(s->id.ns)) !=
        targets.end()) {
      applier_->Forget(id);
    }
  }
  return absl::OkStatus();
}

}  // namespace kvidx::ingest
