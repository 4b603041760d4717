// PublisherLink's KVBM instances (ingest/kvbm_instances.h): which publisher each instance of
// the endpoint writes to, the sub-publishers "<pod>#<n>" it registers for instances past the
// first, and what they mirror of the endpoint's stream.
#include "absl/strings/str_cat.h"

#include "ingest/publisher_link.h"
#include "shared/clock.h"
#include "shared/log.h"
#include "wire/lineage_hash.h"

namespace kvidx::ingest {

using index::AddRelaxed;
using index::Ld;
using index::St;

std::string PublisherLink::InstancePod(uint32_t n) const {
  return absl::StrCat(config_.pod, "#", n);
}

// Cached by slot while the registry does not change (FindPublisher scans every slot; this runs
// for every batch and every mirror of the stream). Only this worker's thread unregisters this
// link's publishers, and every (un)registration bumps the version, so a cached id is live.
std::optional<index::PublisherId> PublisherLink::InstancePublisher(uint32_t n, bool create) {
  if (n == 0) return id_;
  const uint64_t version = Ld(index_->header()->registry_version);
  if (version != instance_ids_version_ || instance_ids_.size() != instances_.max_slots()) {
    instance_ids_.assign(instances_.max_slots(), std::nullopt);
    instance_ids_version_ = version;
  }
  if (n < instance_ids_.size() && instance_ids_[n]) return instance_ids_[n];
  std::optional<index::PublisherId> found = index_->FindPublisher(InstancePod(n), config_.dp_rank);
  if (!found && create) found = RegisterInstance(n);
  if (found && n < instance_ids_.size()) {
    if (Ld(index_->header()->registry_version) != instance_ids_version_) {
      instance_ids_.assign(instances_.max_slots(), std::nullopt);  // our registration
      instance_ids_version_ = Ld(index_->header()->registry_version);
    }
    instance_ids_[n] = found;
  }
  return found;
}

std::optional<index::PublisherId> PublisherLink::RegisterInstance(uint32_t n) {
  const index::PublisherSlot* primary = index_->publisher_slot(id_);
  if (primary == nullptr) return std::nullopt;
  index::PublisherSpec spec;
  spec.pod = InstancePod(n);
  spec.dp_rank = config_.dp_rank;
  spec.ns = Ld(primary->id.ns);
  spec.worker = Ld(primary->id.worker);  // the same writer as the endpoint's
  spec.quota_pairs = Ld(primary->id.quota_pairs);
  spec.private_engine_hashes = (Ld(primary->id.flags) & index::kPrivateEngineHashes) != 0;
  spec.dialect = wire::DialectName(Dialect::kKvbm);  // no endpoint: no link of its own
  auto id = index_->RegisterPublisher(spec);
  if (!id.ok()) {
    KVIDX_LOG_WARN("publisher %s/%u: KVBM instance publisher %s: %s", config_.pod.c_str(),
                   config_.dp_rank, spec.pod.c_str(), id.status().ToString().c_str());
    return std::nullopt;
  }
  return *id;
}

// One pass over the registry: each "<pod>#<n>" of this endpoint is restored to slot n, or
// dropped if a larger max_kvbm_instances gave it to a previous worker. Only links that can
// carry KVBM look.
void PublisherLink::RestoreInstances() {
  if (config_.dialect != Dialect::kKvbm && config_.dialect != Dialect::kAuto) return;
  const int64_t now = MonotonicNanos();
  auto restore = [&](uint32_t n, const index::PublisherIngestState& s) {
    if (Ld(s.has_instance) != 0) instances_.Restore(n, {Ld(s.instance_hi), Ld(s.instance_lo)}, now);
  };
  if (const index::PublisherIngestState* s = slot()) restore(0, *s);
  for (index::PublisherId id : index_->ActivePublishers()) {
    const index::PublisherSlot* ps = index_->publisher_slot(id);
    if (ps == nullptr || Ld(ps->id.dp_rank) != config_.dp_rank) continue;
    const std::optional<uint32_t> n = InstanceNumberOf(*ps, config_.pod);
    if (!n || *n == 0) continue;
    if (*n < instances_.max_slots()) {
      restore(*n, ps->ingest);
      continue;
    }
    KVIDX_LOG_INFO("publisher %s/%u: %s dropped: past max_kvbm_instances", config_.pod.c_str(),
                   config_.dp_rank, InstancePod(*n).c_str());
    applier_->Forget(id);
    (void)index_->UnregisterPublisher(id);
  }
  PublishInstanceCount();
}

void PublisherLink::PublishInstanceCount() {
  if (index::PublisherIngestState* s = slot()) St(s->kvbm_instances, instances_.live());
}

void PublisherLink::DropInstance(uint32_t n, const char* why) {
  auto p = InstancePublisher(n, false);
  if (!p) return;
  KVIDX_LOG_INFO("publisher %s/%u: KVBM instance slot %u (%s) dropped: %s", config_.pod.c_str(),
                 config_.dp_rank, n, InstancePod(n).c_str(), why);
  applier_->Forget(*p);
  if (n == 0) {
    if (index::PublisherIngestState* s = index_->ingest_state(*p)) St(s->has_instance, 0u);
    (void)index_->ClearPublisher(*p);
  } else {
    (void)index_->UnregisterPublisher(*p);
  }
}

std::optional<index::PublisherId> PublisherLink::RouteInstance(
    const std::pair<uint64_t, uint64_t>& inst) {
  std::vector<uint32_t> expired;
  auto r = instances_.Take({inst.first, inst.second}, MonotonicNanos(), &expired);
  for (uint32_t e : expired) DropInstance(e, "silent while other instances spoke");
  std::optional<index::PublisherId> p;
  if (r) p = InstancePublisher(r->slot, true);
  if (!p) {
    if (r) instances_.Release(r->slot);
    if (index::PublisherIngestState* s = slot()) AddRelaxed(s->kvbm_refused, uint64_t{1});
    PublishInstanceCount();
    return std::nullopt;
  }
  index::PublisherIngestState* s = index_->ingest_state(*p);
  if (r->fresh && s != nullptr) {
    // A slot's publisher holds nothing of a new instance: whatever it held was another's.
    St(s->has_instance, 0u);
    (void)index_->ClearPublisher(*p);
    applier_->Forget(*p);
    St(s->instance_hi, inst.first);
    St(s->instance_lo, inst.second);
    St(s->has_instance, 1u);
    KVIDX_LOG_INFO("publisher %s/%u: KVBM instance %s in slot %u", config_.pod.c_str(),
                   config_.dp_rank, wire::U128Decimal(inst.first, inst.second).c_str(), r->slot);
  }
  PublishInstanceCount();
  return p;
}

void PublisherLink::ReleaseInstance(const std::pair<uint64_t, uint64_t>& inst) {
  for (uint32_t n = 0; n < instances_.max_slots(); ++n) {
    auto at = instances_.at(n);
    if (!at || at->hi != inst.first || at->lo != inst.second) continue;
    instances_.Release(n);
    DropInstance(n, "Shutdown");
  }
  PublishInstanceCount();
}

void PublisherLink::ForgetInstances() {
  for (uint32_t n = 1; n < instances_.max_slots(); ++n) {
    if (InstancePublisher(n, false)) DropInstance(n, "the endpoint was resynced");
  }
  if (index::PublisherIngestState* s = slot()) St(s->has_instance, 0u);
  instances_.Clear();
  PublishInstanceCount();
}

// What a router reads of a publisher's stream (Freshness) is the endpoint's: copied from the
// configured publisher to each instance's.
void PublisherLink::MirrorToInstances() {
  const index::PublisherIngestState* from = slot();
  if (from == nullptr || instances_.live() == 0) return;
  for (uint32_t n = 1; n < instances_.max_slots(); ++n) {
    if (!instances_.at(n)) continue;
    auto p = InstancePublisher(n, false);
    index::PublisherIngestState* to = p ? index_->ingest_state(*p) : nullptr;
    if (to == nullptr) continue;
    St(to->connected, Ld(from->connected));
    St(to->reachable, Ld(from->reachable));
    St(to->stream_state, Ld(from->stream_state));
    St(to->gap_open, Ld(from->gap_open));
    St(to->epoch, Ld(from->epoch));
    St(to->last_heard_wall_ns, Ld(from->last_heard_wall_ns));
    St(to->connected_since_wall_ns, Ld(from->connected_since_wall_ns));
  }
}

}  // namespace kvidx::ingest
