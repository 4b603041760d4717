#include "ingest/worker.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

#include "shared/clock.h"
#include "shared/log.h"
#include "shared/status.h"

namespace kvidx::ingest {

Worker::Worker(Config config, uint32_t worker_index)
    : config_(std::move(config)), worker_(worker_index), ctx_(1) {}

Worker::~Worker() {
  links_.clear();
  ctx_.close();
}

LinkOptions Worker::MakeLinkOptions() const {
  LinkOptions o;
  o.reconnect_initial_ms = config_.reconnect_initial_ms;
  o.reconnect_max_ms = config_.reconnect_max_ms;
  o.replay_timeout_ms = config_.replay_timeout_ms;
  o.idle_probe_ms = config_.idle_probe_ms;
  o.unreachable_after_ms = config_.unreachable_after_ms;
  o.drop_after_ms = config_.drop_after_ms;
  o.rcvhwm = config_.rcvhwm;
  o.max_buffered_batches = config_.max_buffered_batches;
  o.limits.max_payload_bytes = config_.max_payload_bytes;
  o.limits.strict = config_.strict_tags;
  return o;
}

absl::Status Worker::Init() {
  if (worker_ >= config_.workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker ", worker_, " of ", config_.workers, ": index out of range"));
  }
  KVIDX_ASSIGN_OR_RETURN(segment_, index::Segment::OpenOrCreate(config_.segment, config_.geometry,
                                                                config_.segment_mode));
  index_ = std::make_unique<index::PrefixIndex>(segment_.get());
  KVIDX_ASSIGN_OR_RETURN(control_, index::ControlArea::Open(index::ControlName(config_.segment),
                                                            config_.segment_mode));
  control_->header()->rings[worker_ % index::kMaxWorkers].pid = static_cast<uint32_t>(getpid());
  ApplierConfig ac;
  ac.on_applied = [this](const AppliedInfo& a) {
    index::RingEntry e{};
    e.wall_ns = WallNanos();
    e.kind = a.kind == EventKind::kStored || a.kind == EventKind::kSeqStored     ? 1
             : a.kind == EventKind::kRemoved || a.kind == EventKind::kSeqRemoved ? 2
                                                                                 : 3;
    e.publisher = a.publisher;
    e.ns = a.ns;
    e.blocks = a.blocks;
    e.first_key = a.first_key;
    control_->Append(worker_, e);
  };
  if (!config_.models.empty()) ac.default_block_size = config_.models[0].block_size;
  ac.max_adapters_per_model = config_.max_adapters_per_model;
  for (const auto& m : config_.models)
    ac.lora_names.insert(m.lora_names.begin(), m.lora_names.end());
  applier_ = std::make_unique<Applier>(index_.get(), ac);
  KVIDX_RETURN_IF_ERROR(RegisterFromConfig());
  uint32_t repaired = index_->RepairAbandonedStripes();
  if (repaired > 0) KVIDX_LOG_WARN("repaired %u stripes left by a dead writer", repaired);
  SyncLinks();
  return absl::OkStatus();
}

absl::Status Worker::RegisterFromConfig() {
  for (const auto& m : config_.models) {
    index::NamespaceSpec spec;
    spec.model = m.name;
    spec.block_size = m.block_size;
    spec.key_by_engine_hash = m.key_by_engine_hash;
    KVIDX_RETURN_IF_ERROR(index_->RegisterNamespace(spec).status());
  }
  for (const auto& p : config_.publishers) {
    auto ns = index_->FindNamespace(p.model, "");
    if (!ns) return absl::NotFoundError(absl::StrCat("model ", p.model, " not registered"));
    index::PublisherSpec spec;
    spec.pod = p.pod;
    spec.dp_rank = p.dp_rank;
    spec.ns = *ns;
    spec.worker = OwnerWorker(p.pod, p.dp_rank, config_.workers);
    spec.quota_pairs = p.quota_pairs;
    spec.private_engine_hashes = p.private_engine_hashes;
    spec.endpoint = p.endpoint;
    spec.replay_endpoint = p.replay_endpoint;
    spec.topic = p.topic;
    spec.dialect = DialectName(p.dialect);
    if (p.bind) spec.dialect += "+bind";
    KVIDX_RETURN_IF_ERROR(index_->RegisterPublisher(spec).status());
  }
  return absl::OkStatus();
}

absl::Status Worker::Reload(Config config) {
  const uint32_t workers = config_.workers;
  config.workers = workers;  // ownership does not move at run time
  auto key = [](const PublisherConfig& p) { return std::make_pair(p.pod, p.dp_rank); };
  std::map<std::pair<std::string, uint32_t>, const PublisherConfig*> wanted;
  for (const auto& p : config.publishers) wanted[key(p)] = &p;
  // The diff, applied by the worker that owns each publisher (every worker rereads the file).
  for (const auto& old : config_.publishers) {
    if (OwnerWorker(old.pod, old.dp_rank, workers) != worker_) continue;
    auto id = index_->FindPublisher(old.pod, old.dp_rank);
    if (!id) continue;
    auto it = wanted.find(key(old));
    if (it == wanted.end()) {
      // Removed from the file: gone from the index too (registered by RPC it would not have
      // been in the file).
      links_.erase(*id);
      applier_->Forget(*id);
      absl::Status st = index_->UnregisterPublisher(*id);
      KVIDX_LOG_INFO("publisher %s/%u: removed from the configuration: %s", old.pod.c_str(),
                     old.dp_rank, st.ok() ? "unregistered" : st.ToString().c_str());
      continue;
    }
    const PublisherConfig& now = *it->second;
    // A new model or hash scope changes how its blocks are keyed and mapped: entries made under
    // the old ones could never be removed. Start the publisher over from its engine's replay.
    if (now.model != old.model || now.private_engine_hashes != old.private_engine_hashes) {
      links_.erase(*id);
      ResyncPublisher(index_.get(), applier_.get(), *id);
      KVIDX_LOG_INFO("publisher %s/%u: model or hash scope changed: rebuilt from a replay",
                     now.pod.c_str(), now.dp_rank);
    }
  }
  config_ = std::move(config);
  KVIDX_RETURN_IF_ERROR(RegisterFromConfig());
  registry_version_ = ~uint64_t{0};
  SyncLinks();  // relinks publishers whose endpoints, topic, dialect or bind flag changed
  return absl::OkStatus();
}

// Makes the set of links equal to the active publishers this worker owns, as the segment's
// registry says (configured ones and those registered through the admin API alike).
void Worker::SyncLinks() {
  uint64_t version = index::Ld(index_->header()->registry_version);
  if (version == registry_version_) return;
  registry_version_ = version;
  std::map<index::PublisherId, PublisherConfig> wanted;
  for (index::PublisherId id : index_->ActivePublishers()) {
    const index::PublisherSlot* s = index_->publisher_slot(id);
    if (s == nullptr || s->id.worker != worker_ || s->id.endpoint[0] == '\0') continue;
    PublisherConfig pc;
    pc.pod = s->id.pod;
    pc.dp_rank = s->id.dp_rank;
    pc.endpoint = s->id.endpoint;
    pc.replay_endpoint = s->id.replay_endpoint;
    pc.topic = s->id.topic;
    std::string dialect = s->id.dialect;
    pc.bind = dialect.size() > 5 && dialect.substr(dialect.size() - 5) == "+bind";
    if (pc.bind) dialect.resize(dialect.size() - 5);
    pc.dialect = ParseDialect(dialect).value_or(Dialect::kAuto);
    wanted.emplace(id, std::move(pc));
  }
  for (auto it = links_.begin(); it != links_.end();) {
    auto w = wanted.find(it->first);
    bool same = w != wanted.end() && w->second.endpoint == it->second->config().endpoint &&
                w->second.replay_endpoint == it->second->config().replay_endpoint &&
                w->second.topic == it->second->config().topic &&
                w->second.dialect == it->second->config().dialect &&
                w->second.bind == it->second->config().bind;
    if (!same) {
      KVIDX_LOG_INFO("publisher %s/%u: link closed", it->second->config().pod.c_str(),
                     it->second->config().dp_rank);
      it = links_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [id, pc] : wanted) {
    if (links_.count(id)) continue;
    absl::Status rs = index_->RecoverPublisher(id);
    if (!rs.ok())
      KVIDX_LOG_ERROR("publisher %s: recovery: %s", pc.pod.c_str(), rs.ToString().c_str());
    auto link = std::make_unique<PublisherLink>(ctx_, index_.get(), applier_.get(), id, pc,
                                                MakeLinkOptions());
    absl::Status st = link->Start();
    if (!st.ok()) {
      KVIDX_LOG_ERROR("%s", st.ToString().c_str());
      continue;
    }
    KVIDX_LOG_INFO("publisher %s/%u: %s %s%s%s (%s)", pc.pod.c_str(), pc.dp_rank,
                   pc.bind ? "bound" : "connected to", pc.endpoint.c_str(),
                   pc.replay_endpoint.empty() ? "" : ", replay ", pc.replay_endpoint.c_str(),
                   DialectName(pc.dialect));
    links_.emplace(id, std::move(link));
  }
}

void Worker::ServeCommands() {
  control_->Serve(worker_, [this](index::Command& c, char* payload) { Execute(c, payload); });
}

void Worker::Execute(index::Command& c, char* payload) {
  auto done = [&](const absl::Status& st) {
    c.code = static_cast<int32_t>(st.code());
    std::snprintf(c.message, sizeof(c.message), "%s", std::string(st.message()).c_str());
  };
  const std::string pod(c.pod, strnlen(c.pod, sizeof(c.pod)));
  switch (static_cast<index::CommandOp>(c.op)) {
    case index::CommandOp::kRegister: {
      auto ns = index_->FindNamespace(std::string(c.model, strnlen(c.model, sizeof(c.model))), "");
      if (!ns) {
        done(
            absl::FailedPreconditionError(absl::StrCat("model '", c.model, "' is not configured")));
        return;
      }
      index::PublisherSpec spec;
      spec.pod = pod;
      spec.dp_rank = static_cast<uint32_t>(std::max(0, c.dp_rank));
      spec.ns = *ns;
      spec.worker = OwnerWorker(pod, spec.dp_rank, config_.workers);
      spec.quota_pairs = c.quota_pairs;
      spec.endpoint = c.endpoint;
      spec.replay_endpoint = c.replay_endpoint;
      spec.topic = c.topic;
      spec.dialect = c.dialect;
      auto id = index_->RegisterPublisher(spec);
      if (id.ok()) c.publishers = 1;
      done(id.status());
      return;
    }
    case index::CommandOp::kUnregister:
    case index::CommandOp::kClearPod: {
      bool unregister = static_cast<index::CommandOp>(c.op) == index::CommandOp::kUnregister;
      uint32_t n = 0;
      uint64_t pairs = 0;
      for (index::PublisherId id : index_->ActivePublishers()) {
        const index::PublisherSlot* s = index_->publisher_slot(id);
        // Only this worker's own publishers: another worker may be applying to its own right
        // now, and the publisher's journal and applied-op counter have one writer, its owner.
        if (s == nullptr || pod != s->id.pod || s->id.worker != worker_ ||
            (c.dp_rank >= 0 && s->id.dp_rank != uint32_t(c.dp_rank))) {
          continue;
        }
        pairs += s->index.pairs;
        applier_->Forget(id);
        absl::Status st = unregister ? index_->UnregisterPublisher(id) : index_->ClearPublisher(id);
        if (!st.ok()) {
          done(st);
          return;
        }
        ++n;
      }
      c.publishers = n;
      c.pairs = pairs;
      done(n == 0 ? absl::NotFoundError(absl::StrCat("no publisher ", pod)) : absl::OkStatus());
      return;
    }
    case index::CommandOp::kListSequences:
    case index::CommandOp::kGetSequence: {
      auto id = index_->FindPublisher(pod, static_cast<uint32_t>(std::max(0, c.dp_rank)));
      if (!id) {
        done(absl::NotFoundError(absl::StrCat("no publisher ", pod)));
        return;
      }
      const auto* seqs = applier_->sequences(*id);
      std::string out;
      auto line = [&](int64_t seq_id, const SequenceState& s) {
        uint32_t blocks = 0;
        for (auto k : s.blocks) blocks += k != 0;
        // One line per sequence: the request id is escaped (\\, \n, \r) so that no byte of it
        // can end the line.
        std::string rid;
        for (char ch : s.request_id) {
          if (ch == '\\')
            rid += "\\\\";
          else if (ch == '\n')
            rid += "\\n";
          else if (ch == '\r')
            rid += "\\r";
          else
            rid += ch;
        }
        out += absl::StrCat(seq_id, " ", s.finished ? 1 : 0, " ", s.succeeded ? 1 : 0, " ", blocks,
                            " ", rid, "\n");
      };
      if (static_cast<index::CommandOp>(c.op) == index::CommandOp::kListSequences) {
        if (seqs != nullptr) {
          for (const auto& [seq_id, s] : *seqs) line(seq_id, s);
        }
      } else {
        auto it = seqs == nullptr ? decltype(seqs->end()){} : seqs->find(c.sequence_id);
        if (seqs == nullptr || it == seqs->end()) {
          done(absl::NotFoundError(absl::StrCat("no sequence ", c.sequence_id, " on ", pod)));
          return;
        }
        line(it->first, it->second);
        char hex[20];
        for (auto k : it->second.blocks) {
          std::snprintf(hex, sizeof(hex), "%016lx\n", static_cast<unsigned long>(k));
          out += hex;
        }
      }
      if (out.size() > index::kPayloadBytes) {
        out.resize(out.rfind('\n', index::kPayloadBytes - 1) + 1);
        c.truncated = 1;
      }
      std::copy(out.begin(), out.end(), payload);  // a sized payload, not a C string
      c.payload_size = static_cast<uint32_t>(out.size());
      done(absl::OkStatus());
      return;
    }
    case index::CommandOp::kClearNamespace:
    case index::CommandOp::kClearAll: {
      std::vector<index::NamespaceId> targets;
      if (static_cast<index::CommandOp>(c.op) == index::CommandOp::kClearAll) {
        targets = index_->ActiveNamespaces();
      } else {
        auto ns = index_->FindNamespace(c.model, c.lora_name);
        if (!ns) {
          done(absl::NotFoundError(absl::StrCat("no namespace ", c.model, "/", c.lora_name)));
          return;
        }
        targets.push_back(*ns);
      }
      uint64_t blocks = 0;
      for (auto ns : targets) {
        auto dropped = index_->ClearNamespace(ns, heartbeat_);
        if (dropped.ok()) blocks += *dropped;
      }
      // What this worker keeps in memory about its publishers' blocks (sequence tables,
      // adapter namespaces) no longer holds for the cleared namespaces.
      for (index::PublisherId id : index_->ActivePublishers()) {
        const index::PublisherSlot* s = index_->publisher_slot(id);
        if (s == nullptr || s->id.worker != worker_) continue;
        if (std::find(targets.begin(), targets.end(), static_cast<index::NamespaceId>(s->id.ns)) ==
            targets.end()) {
          continue;
        }
        applier_->Forget(id);
      }
      c.blocks = blocks;
      done(absl::OkStatus());
      return;
    }
  }
  done(absl::InvalidArgumentError("unknown command"));
}

void Worker::Run(const std::atomic<bool>& stop, const std::function<void()>& on_tick) {
  std::vector<zmq::pollitem_t> items;
  std::vector<PublisherLink*> owners;
  int64_t last_tick = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    items.clear();
    owners.clear();
    for (auto& [id, link] : links_) {
      link->AppendPollItems(&items);
      owners.push_back(link.get());
    }
    if (items.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(config_.poll_timeout_ms));
    } else {
      try {
        zmq::poll(items.data(), items.size(), std::chrono::milliseconds(config_.poll_timeout_ms));
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) KVIDX_LOG_ERROR("poll: %s", e.what());
      }
      size_t at = 0;
      for (PublisherLink* link : owners) {
        link->Handle(&items[at]);
        at += link->poll_item_count();
      }
    }
    int64_t now = MonotonicNanos();
    if (now - last_tick > int64_t{config_.poll_timeout_ms} * 1'000'000) {
      last_tick = now;
      for (auto& [id, link] : links_) link->Tick(now);
      ServeCommands();
      SyncLinks();
      if (on_tick) on_tick();
    }
  }
}

}  // namespace kvidx::ingest
