#include "index/internal/engine_table.h"

#include <algorithm>
#include <vector>

#include "index/internal/seqlock.h"

namespace kvidx::index::internal {
namespace {

// How many buckets one insert into a full stripe may sweep: a stripe full of live entries costs
// each insert a little, not a pass over the stripe.
constexpr uint32_t kSweepBuckets = 64;

// Whether the chain from `head` stays in range and ends within the stripe's node count: every
// index a writer follows is checked first, so a corrupt chain is repaired, never followed.
bool ChainOk(const StripeGeometry& sg, const EngineView& v, uint32_t head) {
  uint32_t steps = 0;
  for (uint32_t i = head; i != kNil; i = Ld(v.nodes[i].next)) {
    if (i >= sg.engine_nodes_per_stripe || ++steps > sg.engine_nodes_per_stripe) return false;
  }
  return true;
}

}  // namespace

void RepairEngineStripe(const StripeGeometry& sg, const EngineView& v) {
  std::vector<uint8_t> seen(sg.engine_nodes_per_stripe, 0);
  uint32_t live = 0;
  for (uint32_t b = 0; b < sg.engine_buckets_per_stripe; ++b) {
    uint32_t* link = &v.buckets[b];
    uint32_t i = Ld(*link);
    while (i != kNil) {
      if (i >= sg.engine_nodes_per_stripe || seen[i]) {
        St(*link, kNil);
        break;
      }
      seen[i] = 1;
      ++live;
      link = &v.nodes[i].next;
      i = Ld(*link);
    }
  }
  uint32_t free_head = kNil;
  for (uint32_t i = sg.engine_nodes_per_stripe; i-- > 0;) {
    if (seen[i]) continue;
    St(v.nodes[i].next, free_head);
    free_head = i;
  }
  St(v.h->free_nodes, free_head);
  St(v.h->live_nodes, live);
  AddRelaxed(v.h->repairs, uint64_t{1});
}

EngineTable::EngineTable(char* base, const SegmentHeader* header, const BlockStripes& blocks)
    : first_(base + header->engine_stripes_offset),
      stride_(header->engine_stripe_stride),
      sg_(header->stripe_geometry),
      parts_(EngineStripePartsOf(header->stripe_geometry)),
      blocks_(blocks) {}

void EngineTable::Sweep(const EngineView& v) {
  // Under this stripe's lock, so an entry whose block a writer has just stored (before taking
  // this lock) is seen to exist and kept.
  const uint32_t nb = sg_.engine_buckets_per_stripe;
  uint32_t cursor = Ld(v.h->sweep_cursor) % nb;
  for (uint32_t step = 0; step < std::min(nb, kSweepBuckets) && Ld(v.h->free_nodes) == kNil;
       ++step, cursor = (cursor + 1) % nb) {
    uint32_t* link = &v.buckets[cursor];
    if (!ChainOk(sg_, v, Ld(*link))) RepairEngineStripe(sg_, v);
    while (Ld(*link) != kNil) {
      uint32_t i = Ld(*link);
      if (blocks_.Exists(Ld(v.nodes[i].block_key))) {
        link = &v.nodes[i].next;
        continue;
      }
      St(*link, Ld(v.nodes[i].next));
      St(v.nodes[i].next, Ld(v.h->free_nodes));
      St(v.h->free_nodes, i);
      St(v.h->live_nodes, Ld(v.h->live_nodes) - 1);
      AddRelaxed(v.h->swept, uint64_t{1});
    }
  }
  St(v.h->sweep_cursor, cursor);
}

absl::Status EngineTable::Ensure(uint64_t engine_hash, NamespaceId ns, uint16_t scope, BlockKey key,
                                 bool overwrite) {
  const uint64_t mixed = Mix(engine_hash, ns, scope);
  const EngineView v = stripe_for(mixed);
  StripeWriteGuard<EngineStripeHeader> guard(v.h, [this, &v] { RepairEngineStripe(sg_, v); });
  if (!guard.ok()) return absl::InternalError("engine stripe lock unrecoverable");
  uint32_t* head = &v.buckets[bucket(mixed)];
  const uint32_t free_head = Ld(v.h->free_nodes);
  if (!ChainOk(sg_, v, Ld(*head)) ||
      (free_head != kNil && free_head >= sg_.engine_nodes_per_stripe)) {
    RepairEngineStripe(sg_, v);
  }
  for (uint32_t i = Ld(*head); i != kNil; i = Ld(v.nodes[i].next)) {
    EngineNode& n = v.nodes[i];
    if (Ld(n.engine_hash) != engine_hash || Ld(n.ns) != ns || Ld(n.scope) != scope) continue;
    BlockKey old = Ld(n.block_key);
    if (old == key) return absl::OkStatus();
    // A stale entry (its block is gone) is reused; a live one keeps its meaning unless the
    // caller says otherwise.
    if (!overwrite && blocks_.Exists(old)) return absl::AlreadyExistsError("engine hash conflict");
    St(n.block_key, key);
    return absl::OkStatus();
  }
  if (Ld(v.h->free_nodes) == kNil) Sweep(v);
  if (Ld(v.h->free_nodes) == kNil) {
    AddRelaxed(v.h->full, uint64_t{1});
    return absl::ResourceExhaustedError("engine hash table stripe is full");
  }
  uint32_t i = Ld(v.h->free_nodes);
  St(v.h->free_nodes, Ld(v.nodes[i].next));
  EngineNode& n = v.nodes[i];
  St(n.engine_hash, engine_hash);
  St(n.block_key, key);
  St(n.ns, ns);
  St(n.scope, scope);
  St(n.next, Ld(*head));
  St(*head, i);  // publishes the entry
  St(v.h->live_nodes, Ld(v.h->live_nodes) + 1);
  return absl::OkStatus();
}

bool EngineTable::RepairIfAbandoned(uint32_t s) {
  const EngineView v = stripe(s);
  if ((Ld(v.h->version) & 1) == 0) return false;
  uint64_t before = Ld(v.h->repairs);
  {
    StripeWriteGuard<EngineStripeHeader> guard(v.h, [this, &v] { RepairEngineStripe(sg_, v); });
  }
  return Ld(v.h->repairs) != before;
}

void EngineTable::AddStats(IndexStats& s) const {
  s.engine_capacity += uint64_t{sg_.engine_nodes_per_stripe} * sg_.engine_stripes;
  for (uint32_t i = 0; i < sg_.engine_stripes; ++i) {
    const EngineView v = stripe(i);
    s.engine_entries += Ld(v.h->live_nodes);
    s.engine_swept += Ld(v.h->swept);
    s.engine_full += Ld(v.h->full);
    s.stripe_repairs += Ld(v.h->repairs);
  }
}

uint32_t EngineTable::MidUpdate() const {
  uint32_t n = 0;
  for (uint32_t s = 0; s < sg_.engine_stripes; ++s) n += Ld(stripe(s).h->version) & 1;
  return n;
}

}  // namespace kvidx::index::internal
