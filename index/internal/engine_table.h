// The engine-hash table: (engine hash, namespace, scope) -> block key, in its own stripes.
//
// Contract
// - A cache that is never wrong, only possibly stale: an engine hash names the same content
//   every time, so an entry stays valid after its block is evicted and is swept only when its
//   stripe fills up. An entry whose block is live never changes meaning unless the caller asks
//   (`overwrite`).
// - Read() takes no lock (seqlock); Ensure() takes the entry's stripe lock, and may read block
//   stripes (to tell live entries from stale ones) but never locks one.
// - Scope 0 is shared by publishers with content hashes; scope p + 1 is publisher p's own.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"

#include "index/internal/block_stripe.h"
#include "index/internal/seqlock.h"
#include "index/internal/stripe_layout.h"
#include "index/types.h"

namespace kvidx::index::internal {

class EngineTable {
 public:
  EngineTable(char* base, const SegmentHeader* header, const BlockStripes& blocks);

  uint32_t count() const { return sg_.engine_stripes; }
  EngineView stripe(uint32_t s) const {
    return MakeEngineView(first_ + uint64_t{s} * stride_, parts_);
  }

  // The block key of the entry, if any. `validated` (if given) tells whether the read was
  // validated against the stripe version (false: a best-effort read of a stalled stripe).
  std::optional<BlockKey> Read(uint64_t engine_hash, NamespaceId ns, uint16_t scope,
                               bool* validated) const;
  // Maps the entry to `key`. ALREADY_EXISTS if it maps to another block that is live (unless
  // `overwrite`); RESOURCE_EXHAUSTED (counted in the stripe) if the stripe has no room after a
  // bounded sweep of stale entries; INTERNAL if the stripe lock is unrecoverable.
  absl::Status Ensure(uint64_t engine_hash, NamespaceId ns, uint16_t scope, BlockKey key,
                      bool overwrite = false);
  // Starts loading the bucket head of the entry (a store about to map it).
  void Prefetch(uint64_t engine_hash, NamespaceId ns, uint16_t scope) const {
    const uint64_t mixed = Mix(engine_hash, ns, scope);
    __builtin_prefetch(&stripe_for(mixed).buckets[bucket(mixed)]);
  }
  // Locks stripe `s` if its version is odd (repairing it if its writer died); returns whether
  // it was repaired.
  bool RepairIfAbandoned(uint32_t s);

  void AddStats(IndexStats& s) const;
  uint32_t MidUpdate() const;

 private:
  static uint64_t Mix(uint64_t engine_hash, NamespaceId ns, uint16_t scope) {
    // ns in bits 48-63, scope in bits 32-47: the bits of (ns << 48) ^ (scope << 32).
    const uint64_t tag = (uint64_t{ns} << 16 | uint64_t{scope}) << 32;
    uint64_t x = engine_hash ^ tag ^ 0x9e3779b97f4a7c15ULL;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
  }
  EngineView stripe_for(uint64_t mixed) const {
    return stripe(static_cast<uint32_t>(mixed >> 40) & (sg_.engine_stripes - 1));
  }
  uint32_t bucket(uint64_t mixed) const {
    return static_cast<uint32_t>(mixed) & (sg_.engine_buckets_per_stripe - 1);
  }
  // Frees entries whose block is gone, from the stripe's sweep cursor, at most kSweepBuckets
  // buckets, until one node is free. Caller holds the stripe lock.
  void Sweep(const EngineView& v);

  char* first_;
  uint64_t stride_;
  StripeGeometry sg_;
  EngineStripeParts parts_;
  const BlockStripes& blocks_;
};

// Rebuilds an engine stripe's free list and count after its writer died; caller holds the
// stripe lock.
void RepairEngineStripe(const StripeGeometry& sg, const EngineView& v);

// Inline: every store re-reads its mapping, and every removal resolves one.
inline std::optional<BlockKey> EngineTable::Read(uint64_t engine_hash, NamespaceId ns,
                                                 uint16_t scope, bool* validated) const {
  const uint64_t mixed = Mix(engine_hash, ns, scope);
  const EngineView v = stripe_for(mixed);
  const uint32_t b = bucket(mixed);
  auto read = [&]() -> std::optional<BlockKey> {
    uint32_t i = Ld(v.buckets[b]);
    for (uint32_t steps = 0; i < sg_.engine_nodes_per_stripe && steps < sg_.engine_nodes_per_stripe;
         ++steps) {
      const EngineNode& n = v.nodes[i];
      if (Ld(n.engine_hash) == engine_hash && Ld(n.ns) == ns && Ld(n.scope) == scope) {
        return Ld(n.block_key);
      }
      i = Ld(n.next);
    }
    return std::nullopt;
  };
  bool ok = true;
  std::optional<BlockKey> result = OptimisticRead(v.h, read, &ok);
  if (validated != nullptr) *validated = ok;
  return result;
}

}  // namespace kvidx::index::internal
