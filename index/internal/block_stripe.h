// Block stripes: addressing, the lock-free holder read, the writer's operations on one locked
// stripe, and the repair of a stripe whose writer died.
//
// Contract
// - BlockStripes is a view (it owns nothing). Its const reads take no lock (seqlock,
//   index/internal/seqlock.h) and are bounded by the stripe's sizes whatever they read.
// - A BlockStripeWriter holds one stripe for its lifetime (StripeWriteGuard): every member
//   requires ok(). Each change keeps every chain readable at every instruction (nodes linked
//   with one store after they are filled, unlinked with one store before they are freed), which
//   is what makes RepairBlockStripe's rebuild-from-what-is-reachable enough.
// - Residencies dropped from other publishers (eviction) are reported to the Registry.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "index/internal/registry.h"
#include "index/internal/seqlock.h"
#include "index/internal/stripe_layout.h"
#include "index/types.h"

namespace kvidx::index::internal {

// kSame: the block's holder set equals the one given; kToggle: it differs from it by exactly
// one (publisher, tier), named by the HolderMixTable given (holders not read).
enum class ReadResult { kAbsent, kFound, kSame, kToggle };

// Every (publisher, tier)'s HolderMix for publishers below a count, sorted: from the XOR of two
// holder-set fingerprints it names the one (publisher, tier) they differ by, if they differ by
// one. A fingerprint names a set up to a 2^-64 collision, as the kSame shortcut already assumes.
class HolderMixTable {
 public:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;
  void Build(uint32_t publishers) {
    entries_.clear();
    for (uint32_t p = 0; p < publishers && p <= 0xFFFF; ++p) {
      for (uint32_t t = 0; t < kNumTiers; ++t) {
        entries_.push_back(
            {HolderMix(static_cast<uint16_t>(p), static_cast<uint8_t>(t)), p << 2 | t});
      }
    }
    std::sort(entries_.begin(), entries_.end());
  }
  // publisher << 2 | tier, or kNone.
  uint32_t Find(uint64_t mix) const {
    auto it =
        std::lower_bound(entries_.begin(), entries_.end(), std::pair<uint64_t, uint32_t>{mix, 0});
    return it != entries_.end() && it->first == mix ? it->second : kNone;
  }

 private:
  std::vector<std::pair<uint64_t, uint32_t>> entries_;
};

class BlockStripes {
 public:
  BlockStripes(char* base, const SegmentHeader* header);

  uint32_t count() const { return stripes_; }
  const StripeGeometry& sg() const { return sg_; }
  StripeView stripe(uint32_t s) const {
    return MakeStripeView(first_ + uint64_t{s} * stride_, parts_);
  }
  StripeView stripe_for(BlockKey key) const {
    return stripe(static_cast<uint32_t>(key >> 40) & (stripes_ - 1));
  }
  uint32_t bucket(BlockKey key) const {
    return static_cast<uint32_t>(key) & (sg_.buckets_per_stripe - 1);
  }

  // Reads the holders of `key` into `out`; kAbsent if there is no such block. `degraded` is set
  // on a best-effort read of a stripe whose writer died. With `same_as` non-zero, returns kSame
  // without reading holders when the block's holder-set fingerprint equals it; `holder_set`
  // (if given) receives the fingerprint. With `toggles` too, returns kToggle without reading
  // holders when the fingerprint differs from same_as by one (publisher, tier), written to
  // *toggled as publisher << 2 | tier.
  ReadResult ReadHolders(BlockKey key, std::vector<Holder>& out, bool& degraded,
                         uint64_t* holder_set = nullptr, uint64_t same_as = 0,
                         const HolderMixTable* toggles = nullptr,
                         uint32_t* toggled = nullptr) const;
  // Whether `key` has a block. When unsure (a stalled stripe), says it does.
  bool Exists(BlockKey key) const;
  void PrefetchBucket(BlockKey key) const;
  void PrefetchNode(BlockKey key) const;

  void AddStats(IndexStats& s) const;
  uint32_t MidUpdate() const;
  void Dump(std::vector<IndexEntry>& out) const;

 private:
  char* first_;
  uint64_t stride_;
  uint32_t stripes_;
  uint32_t max_chunks_;  // a holder chain never needs more: every publisher in every tier
  StripeGeometry sg_;
  BlockStripeParts parts_;
};

// Rebuilds a stripe after its writer died; caller holds the stripe lock.
void RepairBlockStripe(const StripeGeometry& sg, const StripeView& v);

class BlockStripeWriter {
 public:
  BlockStripeWriter(const BlockStripes& stripes, const Registry& registry, StripeView v);
  // Repairs the stripe (still under its lock) if an index followed was out of range.
  ~BlockStripeWriter();
  BlockStripeWriter(const BlockStripeWriter&) = delete;
  BlockStripeWriter& operator=(const BlockStripeWriter&) = delete;

  bool ok() const { return guard_.ok(); }
  const StripeView& view() const { return v_; }

  uint32_t Find(BlockKey key) const;  // the block node of `key`, or kNil
  // The occupied slot of (p, tier) on `block`, or nullptr; `chunk` receives its chunk.
  HolderSlot* FindSlot(uint32_t block, PublisherId p, Tier tier, uint32_t* chunk) const;
  bool Empty(uint32_t block) const;

  // Sets a slot's reference count (non-zero) and marks the block recently stored.
  void SetRefs(uint32_t block, HolderSlot* slot, PublisherId p, Tier tier, uint8_t refs);
  // Makes room for one more residency of `p` (on `block`, or on a new block when kNil): evicts
  // p's oldest residency here when its quota is reached, and the stripe's oldest blocks while
  // the stripe has no room. RESOURCE_EXHAUSTED (counted) when nothing can be evicted.
  absl::Status MakeRoom(PublisherId p, PublisherSlot& ps, uint32_t block);
  // Adds (p, tier, refs) to existing `block` (room made first).
  void AddHolder(uint32_t block, PublisherId p, Tier tier, uint8_t refs);
  // Creates the block of `key` with its first holder (room made first); one store publishes it.
  void InsertBlock(BlockKey key, NamespaceId ns, PublisherId p, Tier tier, uint8_t refs);
  // Frees a slot (one store); drops its chunk when empty, and the block when it has no holder
  // left.
  void RemoveHolder(uint32_t block, HolderSlot* slot, uint32_t chunk);
  // Drops every residency of `p` in this stripe; returns how many.
  uint32_t DropPublisher(PublisherId p);
  // Drops every block of namespace `ns`, reporting each holder as dropped; returns how many.
  uint64_t DropNamespace(NamespaceId ns);
  // Counts `p`'s residencies in this stripe.
  uint64_t CountPublisher(PublisherId p) const;

 private:
  template <typename F>
  bool ForEachSlot(uint32_t block, F&& fn) const;
  HolderSlot* FindFreeSlot(uint32_t block) const;
  void ClearSlot(uint32_t block, HolderSlot* slot, uint32_t chunk);
  bool HasRoomOn(uint32_t block) const;
  void LruUnlink(uint32_t i);
  void LruAppend(uint32_t i);
  void Touch(uint32_t i);
  // Unlinks block `i` and frees it with every holder still on it; on_drop(publisher) is called
  // for each holder dropped.
  template <typename F>
  void DropBlock(uint32_t i, F&& on_drop);
  bool EvictOldest(uint32_t keep);
  bool EvictForQuota(PublisherId p, uint32_t keep);
  // Every index a writer follows in the segment goes through these: kNil or in range, else it
  // reads as kNil (the chain ends there, nothing outside the stripe is touched) and the stripe
  // is repaired when the writer ends. `steps` bounds a walk: a cycle ends it the same way.
  uint32_t Block(uint32_t i) const { return Checked(i, stripes_.sg().blocks_per_stripe); }
  uint32_t Chunk(uint32_t i) const { return Checked(i, stripes_.sg().chunks_per_stripe); }
  uint32_t Checked(uint32_t i, uint32_t cap) const {
    if (i == kNil || i < cap) [[likely]]
      return i;
    corrupt_ = true;
    return kNil;
  }
  bool Overran(uint32_t& steps, uint32_t cap) const {
    if (++steps <= cap) [[likely]]
      return false;
    corrupt_ = true;
    return true;
  }

  const BlockStripes& stripes_;
  const Registry& registry_;
  StripeView v_;
  StripeWriteGuard<StripeHeader> guard_;
  mutable bool corrupt_ = false;
};

// Inline: the writer's lookups inside a locked stripe, on every store and remove.
inline uint32_t BlockStripeWriter::Find(BlockKey key) const {
  uint32_t i = Block(Ld(v_.buckets[stripes_.bucket(key)]));
  uint32_t steps = 0;
  while (i != kNil && Ld(v_.blocks[i].key) != key) {
    if (Overran(steps, stripes_.sg().blocks_per_stripe)) return kNil;
    i = Block(Ld(v_.blocks[i].next));
  }
  return i;
}

// Calls fn(slot, chunk) for every slot of `block` (chunk is kNil for inline slots) until fn
// returns true; returns whether it did.
template <typename F>
inline bool BlockStripeWriter::ForEachSlot(uint32_t block, F&& fn) const {
  for (HolderSlot& slot : v_.blocks[block].inline_holders) {
    if (fn(slot, kNil)) return true;
  }
  uint32_t steps = 0;
  for (uint32_t c = Chunk(Ld(v_.blocks[block].chunk_head)); c != kNil;
       c = Chunk(Ld(v_.chunks[c].next))) {
    if (Overran(steps, stripes_.sg().chunks_per_stripe)) return false;
    for (HolderSlot& slot : v_.chunks[c].slots) {
      if (fn(slot, c)) return true;
    }
  }
  return false;
}

inline HolderSlot* BlockStripeWriter::FindSlot(uint32_t block, PublisherId p, Tier tier,
                                               uint32_t* chunk) const {
  HolderSlot* found = nullptr;
  ForEachSlot(block, [&](HolderSlot& slot, uint32_t c) {
    HolderSlot s = Ld(slot);
    if (SlotRefs(s) != 0 && SlotPublisher(s) == p && SlotTier(s) == tier) {
      found = &slot;
      if (chunk != nullptr) *chunk = c;
      return true;
    }
    return false;
  });
  return found;
}

inline HolderSlot* BlockStripeWriter::FindFreeSlot(uint32_t block) const {
  HolderSlot* found = nullptr;
  ForEachSlot(block, [&](HolderSlot& slot, uint32_t) {
    if (SlotRefs(Ld(slot)) == 0) found = &slot;
    return found != nullptr;
  });
  return found;
}

inline bool BlockStripeWriter::Empty(uint32_t block) const {
  return !ForEachSlot(block, [](HolderSlot& slot, uint32_t) { return SlotRefs(Ld(slot)) != 0; });
}

inline bool BlockStripeWriter::HasRoomOn(uint32_t block) const {
  if (block == kNil) return Block(Ld(v_.h->free_blocks)) != kNil;
  return FindFreeSlot(block) != nullptr || Chunk(Ld(v_.h->free_chunks)) != kNil;
}

// Inline: the lookup walk calls it once per block.
inline ReadResult BlockStripes::ReadHolders(BlockKey key, std::vector<Holder>& out, bool& degraded,
                                            uint64_t* holder_set, uint64_t same_as,
                                            const HolderMixTable* toggles,
                                            uint32_t* toggled) const {
  const StripeView v = stripe_for(key);
  const uint32_t b = bucket(key);
  uint64_t set = 0;
  auto read = [&] {
    out.clear();
    set = 0;
    uint32_t i = Ld(v.buckets[b]);
    bool found = false;
    for (uint32_t steps = 0; i < sg_.blocks_per_stripe && steps < sg_.blocks_per_stripe; ++steps) {
      if (Ld(v.blocks[i].key) == key) {
        found = true;
        break;
      }
      i = Ld(v.blocks[i].next);
    }
    if (!found) return ReadResult::kAbsent;
    set = Ld(v.blocks[i].holder_set);
    if (same_as != 0 && set == same_as) return ReadResult::kSame;
    if (same_as != 0 && toggles != nullptr) {
      uint32_t code = toggles->Find(set ^ same_as);
      if (code != HolderMixTable::kNone) {
        *toggled = code;
        return ReadResult::kToggle;
      }
    }
    // Bounded: inline slots, then at most as many chunks as could hold every publisher.
    auto take = [&](const HolderSlot& slot) {
      HolderSlot hs = Ld(slot);
      if (SlotRefs(hs) != 0) {
        out.push_back(Holder{SlotPublisher(hs), static_cast<Tier>(SlotTier(hs)), SlotRefs(hs)});
      }
    };
    for (const HolderSlot& slot : v.blocks[i].inline_holders) take(slot);
    uint32_t c = Ld(v.blocks[i].chunk_head);
    for (uint32_t steps = 0; c < sg_.chunks_per_stripe && steps < max_chunks_; ++steps) {
      const HolderChunk& ch = v.chunks[c];
      __builtin_prefetch(&v.chunks[std::min(Ld(ch.next), sg_.chunks_per_stripe - 1)]);
      for (const HolderSlot& slot : ch.slots) take(slot);
      c = Ld(ch.next);
    }
    return ReadResult::kFound;
  };
  bool validated = true;
  ReadResult rr = OptimisticRead(v.h, read, &validated);
  if (!validated) degraded = true;
  if (holder_set != nullptr) *holder_set = set;
  return rr;
}

}  // namespace kvidx::index::internal
