#include "ingest/worker.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

#include "ingest/kvbm_instances.h"
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
  o.max_kvbm_instances = std::clamp<uint32_t>(config_.max_kvbm_instances, 1, 64);
  o.rcvhwm = config_.rcvhwm;
  o.linger_ms = config_.zmq_linger_ms;
  o.max_buffered_batches = config_.max_buffered_batches;
  o.queue_bytes = config_.queue_bytes;
  o.replay_buffer_bytes = config_.replay_buffer_bytes;
  o.sequence_table_bytes = config_.sequence_table_bytes;
  o.limits.max_payload_bytes = config_.max_payload_bytes;
  o.limits.strict = config_.strict_tags;
  return o;
}

absl::Status Worker::Init() {
  if (worker_ >= config_.workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker ", worker_, " of ", config_.workers, ": index out of range"));
  }
  // The segment and the control area are this user's: one another user created (squatted) or
  // left wider than configured is refused, never used.
  KVIDX_ASSIGN_OR_RETURN(uint32_t owner, config::ResolveOwner(config_.segment_owner));
  if (owner != geteuid()) {
    return absl::FailedPreconditionError(
        absl::StrCat("segment_owner '", config_.segment_owner, "' is uid ", owner,
                     " but this worker runs as uid ", geteuid(),
                     ": the segment would be created with another owner than the query expects"));
  }
  KVIDX_ASSIGN_OR_RETURN(segment_, index::Segment::OpenOrCreate(
                                       config_.segment, config_.geometry, config_.segment_mode,
                                       ShmOwnership{owner, config_.segment_mode}));
  index_ = std::make_unique<index::PrefixIndex>(segment_.get());
  if (worker_ == 0) {
    std::string sizing = config::DescribeSizing(config_.workload, index_->geometry());
    std::replace(sizing.begin(), sizing.end(), '\n', ' ');
    KVIDX_LOG_INFO("segment %s: %s", config_.segment.c_str(), sizing.c_str());
  }
  KVIDX_ASSIGN_OR_RETURN(control_, control::ControlArea::Open(
                                       control::ControlName(config_.segment), config_.control_mode,
                                       ShmOwnership{owner, config_.control_mode}));
  control_->header()->rings[worker_ % control::kMaxWorkers].pid = static_cast<uint32_t>(getpid());
  ApplierConfig ac;
  ac.on_applied = [this](const AppliedInfo& a) {
    control::RingEntry e{};
    e.wall_ns = WallNanos();
    e.kind =
        static_cast<uint32_t>(a.kind == EventKind::kStored || a.kind == EventKind::kSeqStored
                                  ? control::AppliedKind::kStored
                              : a.kind == EventKind::kRemoved || a.kind == EventKind::kSeqRemoved
                                  ? control::AppliedKind::kRemoved
                                  : control::AppliedKind::kCleared);
    e.publisher = a.publisher;
    e.ns = a.ns;
    e.blocks = a.blocks;
    e.first_key = a.first_key;
    control_->Append(worker_, e);
  };
  if (!config_.models.empty()) ac.default_block_size = config_.models[0].block_size;
  ac.max_adapters_per_model = config_.max_adapters_per_model;
  ac.max_sequence_bytes = config_.sequence_table_bytes;
  for (const auto& m : config_.models) {
    ac.lora_names.insert(m.lora_names.begin(), m.lora_names.end());
    if (m.engine_hash == "sha256_cbor")
      ac.hash_checks[m.name] = HashCheckConfig{m.engine_hash_seed, m.hash_check_every};
  }
  applier_ = std::make_unique<Applier>(index_.get(), ac);
  KVIDX_RETURN_IF_ERROR(RegisterFromConfig());
  uint32_t repaired = index_->RepairAbandonedStripes();
  if (repaired > 0) KVIDX_LOG_WARN("repaired %u stripes left by a dead writer", repaired);
  SyncLinks();
  for (const config::DiscoveryConfig& d : config_.discovery) discovery_.emplace_back(d);
  return absl::OkStatus();
}

void Worker::ApplyDiscovery() {
  for (Discovery& d : discovery_) {
    const config::DiscoveryConfig& c = d.resolver->config();
    for (const DiscoveredHosts& o : d.resolver->Take()) {
      if (!o.ok) {
        KVIDX_LOG_WARN("discovery %s: resolution failed (%s): publishers kept", c.name.c_str(),
                       o.error.c_str());
        continue;
      }
      const DiscoveryChanges ch = d.state.Apply(o);
      for (const std::string& pod : ch.remove) DropDiscovered(c, pod);
      for (const DiscoveredHost& h : ch.upsert) RegisterDiscovered(c, h);
    }
  }
}

void Worker::RegisterDiscovered(const config::DiscoveryConfig& d, const DiscoveredHost& h) {
  auto ns = index_->FindNamespace(d.model, "");
  if (!ns) return;
  for (uint32_t r = 0; r < d.dp_ranks; ++r) {
    if (OwnerWorker(h.pod, r, config_.workers) != worker_) continue;
    PublisherConfig pc;
    pc.pod = h.pod;
    pc.dp_rank = r;
    pc.model = d.model;
    pc.topic = d.topic;
    pc.dialect = d.dialect;
    pc.endpoint = absl::StrCat("tcp://", h.address, ":", d.pub_port + r * d.dp_port_stride);
    if (d.replay_port != 0) {
      pc.replay_endpoint =
          absl::StrCat("tcp://", h.address, ":", d.replay_port + r * d.dp_port_stride);
    }
    // A known pod at a new address keeps its slot: the link is replaced (SyncLinks) and the
    // stream machine's continuity check decides whether its entries survive.
    auto id = index_->RegisterPublisher(config::PublisherSpecFor(pc, *ns, config_.workers));
    const std::string outcome = id.ok() ? "registered" : id.status().ToString();
    KVIDX_LOG_INFO("discovery %s: %s/%u at %s: %s", d.name.c_str(), h.pod.c_str(), r,
                   pc.endpoint.c_str(), outcome.c_str());
  }
}

void Worker::DropDiscovered(const config::DiscoveryConfig& d, const std::string& pod) {
  for (uint32_t r = 0; r < d.dp_ranks; ++r) {
    if (OwnerWorker(pod, r, config_.workers) != worker_) continue;
    auto id = index_->FindPublisher(pod, r);
    if (!id) continue;
    absl::Status st = DropPublisher(pod, r, *id);
    KVIDX_LOG_INFO("discovery %s: %s/%u gone from DNS: %s", d.name.c_str(), pod.c_str(), r,
                   st.ok() ? "unregistered" : st.ToString().c_str());
  }
}

absl::Status Worker::DropPublisher(const std::string& pod, uint32_t dp_rank,
                                   index::PublisherId id) {
  links_.erase(id);
  applier_->Forget(id);
  absl::Status st = index_->UnregisterPublisher(id);
  DropInstancePods(pod, dp_rank);
  return st;
}

void Worker::DropInstancePods(const std::string& pod, uint32_t dp_rank) {
  for (index::PublisherId sub : index_->ActivePublishers()) {
    const index::PublisherSlot* s = index_->publisher_slot(sub);
    if (s == nullptr || s->id.worker != worker_ || s->id.dp_rank != dp_rank ||
        !InstanceNumberOf(*s, pod)) {
      continue;
    }
    applier_->Forget(sub);
    (void)index_->UnregisterPublisher(sub);
  }
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
    const index::PublisherSpec spec = config::PublisherSpecFor(p, *ns, config_.workers);
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
      absl::Status st = DropPublisher(old.pod, old.dp_rank, *id);
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
      DropInstancePods(now.pod, now.dp_rank);  // their blocks were keyed the old way too
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
    pc.bind = (s->id.flags & index::kBindSubscriber) != 0;
    pc.dialect = ParseDialect(s->id.dialect).value_or(Dialect::kAuto);
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
      ApplyDiscovery();
      SyncLinks();
      if (on_tick) on_tick();
    }
  }
}

}  // namespace kvidx::ingest
