#include "index/internal/block_stripe.h"

#include <algorithm>
#include <utility>

namespace kvidx::index::internal {
namespace {

// How many of the oldest blocks a quota eviction inspects for the over-quota publisher.
constexpr uint32_t kQuotaScan = 256;

// Counts the live holders of block `i` (cutting its chunk chain at the first bad or repeated
// index and unlinking empty chunks) and returns their fingerprint through `set`.
uint32_t RepairHolders(const StripeGeometry& sg, const StripeView& v, uint32_t i,
                       std::vector<uint8_t>& seen_chunk, uint64_t& set) {
  uint32_t count = 0;
  set = 0;
  auto note = [&](HolderSlot& slot) {
    HolderSlot hs = Ld(slot);
    if (SlotRefs(hs) == 0) return 0u;
    set ^= HolderMix(SlotPublisher(hs), SlotTier(hs));
    return 1u;
  };
  for (HolderSlot& slot : v.blocks[i].inline_holders) count += note(slot);
  uint32_t* clink = &v.blocks[i].chunk_head;
  uint32_t c = Ld(*clink);
  // `steps` bounds the walk: a cycle through empty chunks (never marked seen) ends too.
  for (uint32_t steps = 0; c != kNil; ++steps) {
    if (c >= sg.chunks_per_stripe || seen_chunk[c] || steps >= sg.chunks_per_stripe) {
      St(*clink, kNil);
      break;
    }
    uint32_t in_chunk = 0;
    for (HolderSlot& slot : v.chunks[c].slots) in_chunk += note(slot);
    if (in_chunk == 0) {  // an empty chunk is unlinked (and freed by the caller)
      St(*clink, Ld(v.chunks[c].next));
      c = Ld(*clink);
      continue;
    }
    seen_chunk[c] = 1;
    count += in_chunk;
    clink = &v.chunks[c].next;
    c = Ld(*clink);
  }
  return count;
}

// Rebuilds the store-order list from the live blocks' ticks.
void RebuildLru(const StripeView& v, std::vector<std::pair<uint32_t, uint32_t>>& live) {
  std::sort(live.begin(), live.end());
  uint32_t prev = kNil;
  for (auto& [tick, i] : live) {
    St(v.blocks[i].lru_prev, prev);
    St(v.blocks[i].lru_next, kNil);
    if (prev != kNil) St(v.blocks[prev].lru_next, i);
    prev = i;
  }
  St(v.h->lru_oldest, live.empty() ? kNil : live.front().second);
  St(v.h->lru_newest, prev);
  St(v.h->tick, live.empty() ? 0u : live.back().first + 1);
}

// Rebuilds both free lists from what was not seen live.
void RebuildFreeLists(const StripeGeometry& sg, const StripeView& v,
                      const std::vector<uint8_t>& seen_block,
                      const std::vector<uint8_t>& seen_chunk) {
  uint32_t free_head = kNil;
  for (uint32_t i = sg.blocks_per_stripe; i-- > 0;) {
    if (seen_block[i]) continue;
    St(v.blocks[i].in_use, uint16_t{0});
    St(v.blocks[i].chunk_head, kNil);
    for (HolderSlot& slot : v.blocks[i].inline_holders) St(slot, HolderSlot{0});
    St(v.blocks[i].next, free_head);
    free_head = i;
  }
  St(v.h->free_blocks, free_head);
  free_head = kNil;
  for (uint32_t c = sg.chunks_per_stripe; c-- > 0;) {
    if (seen_chunk[c]) continue;
    for (HolderSlot& slot : v.chunks[c].slots) St(slot, HolderSlot{0});
    St(v.chunks[c].next, free_head);
    free_head = c;
  }
  St(v.h->free_chunks, free_head);
}

}  // namespace

// Every chain reachable from the buckets is kept (cut at the first out-of-range or repeated
// index), empty chunks and blocks without holders are dropped, and the free lists and the
// store-order list are rebuilt from what is left.
void RepairBlockStripe(const StripeGeometry& sg, const StripeView& v) {
  std::vector<uint8_t> seen_block(sg.blocks_per_stripe, 0);
  std::vector<uint8_t> seen_chunk(sg.chunks_per_stripe, 0);
  std::vector<std::pair<uint32_t, uint32_t>> live;  // (tick, block)
  uint32_t live_pairs = 0;
  for (uint32_t b = 0; b < sg.buckets_per_stripe; ++b) {
    uint32_t* link = &v.buckets[b];
    uint32_t i = Ld(*link);
    // `steps` bounds the walk: a cycle through blocks without holders (never kept) ends too.
    for (uint32_t steps = 0; i != kNil; ++steps) {
      if (i >= sg.blocks_per_stripe || seen_block[i] || steps >= sg.blocks_per_stripe) {
        St(*link, kNil);
        break;
      }
      seen_block[i] = 1;
      uint64_t set = 0;
      uint32_t count = RepairHolders(sg, v, i, seen_chunk, set);
      if (count == 0) {  // a block without holders is not kept
        seen_block[i] = 0;
        uint32_t next = Ld(v.blocks[i].next);
        St(*link, next);
        i = next;
        continue;
      }
      live_pairs += count;
      St(v.blocks[i].holder_set, set);
      St(v.blocks[i].in_use, uint16_t{1});
      live.emplace_back(Ld(v.blocks[i].tick), i);
      link = &v.blocks[i].next;
      i = Ld(*link);
    }
  }
  RebuildLru(v, live);
  RebuildFreeLists(sg, v, seen_block, seen_chunk);
  St(v.h->live_blocks, static_cast<uint32_t>(live.size()));
  St(v.h->live_residencies, live_pairs);
  AddRelaxed(v.h->repairs, uint64_t{1});
}

// --- BlockStripes ------------------------------------------------------------------------------

BlockStripes::BlockStripes(char* base, const SegmentHeader* header)
    : first_(base + header->stripes_offset),
      stride_(header->stripe_stride),
      stripes_(header->geometry.stripes),
      max_chunks_(header->geometry.publishers * kNumTiers / kChunkHolders + 2),
      sg_(header->stripe_geometry),
      parts_(BlockStripePartsOf(header->stripe_geometry)) {}

bool BlockStripes::Exists(BlockKey key) const {
  thread_local std::vector<Holder> scratch;
  bool degraded = false;
  bool found = ReadHolders(key, scratch, degraded) != ReadResult::kAbsent;
  return found || degraded;  // when unsure, say it exists: sweeping less is always safe
}

void BlockStripes::PrefetchBucket(BlockKey key) const {
  __builtin_prefetch(&stripe_for(key).buckets[bucket(key)]);
}

void BlockStripes::PrefetchNode(BlockKey key) const {
  const StripeView v = stripe_for(key);
  uint32_t i = Ld(v.buckets[bucket(key)]);
  if (i < sg_.blocks_per_stripe) __builtin_prefetch(&v.blocks[i]);
}

void BlockStripes::AddStats(IndexStats& s) const {
  s.block_capacity += uint64_t{sg_.blocks_per_stripe} * stripes_;
  s.pair_capacity += uint64_t{sg_.pairs_per_stripe} * stripes_;
  for (uint32_t i = 0; i < stripes_; ++i) {
    const StripeView v = stripe(i);
    s.blocks += Ld(v.h->live_blocks);
    s.pairs += Ld(v.h->live_residencies);
    s.evicted_blocks += Ld(v.h->evicted_blocks);
    s.stripe_repairs += Ld(v.h->repairs);
  }
}

uint32_t BlockStripes::MidUpdate() const {
  uint32_t n = 0;
  for (uint32_t s = 0; s < stripes_; ++s) n += Ld(stripe(s).h->version) & 1;
  return n;
}

void BlockStripes::Dump(std::vector<IndexEntry>& out) const {
  for (uint32_t s = 0; s < stripes_; ++s) {
    const StripeView v = stripe(s);
    for (uint32_t b = 0; b < sg_.buckets_per_stripe; ++b) {
      uint32_t guard = 0;
      for (uint32_t i = Ld(v.buckets[b]);
           i < sg_.blocks_per_stripe && guard++ < sg_.blocks_per_stripe; i = Ld(v.blocks[i].next)) {
        const BlockNode& n = v.blocks[i];
        auto emit = [&](const HolderSlot& slot) {
          HolderSlot hs = Ld(slot);
          if (SlotRefs(hs) == 0) return;
          out.push_back(
              IndexEntry{Ld(n.key), Ld(n.ns),
                         Holder{SlotPublisher(hs), static_cast<Tier>(SlotTier(hs)), SlotRefs(hs)}});
        };
        for (const HolderSlot& slot : n.inline_holders) emit(slot);
        uint32_t cguard = 0;
        for (uint32_t c = Ld(n.chunk_head);
             c < sg_.chunks_per_stripe && cguard++ < sg_.chunks_per_stripe;
             c = Ld(v.chunks[c].next)) {
          for (const HolderSlot& slot : v.chunks[c].slots) emit(slot);
        }
      }
    }
  }
}

// --- BlockStripeWriter -------------------------------------------------------------------------

BlockStripeWriter::BlockStripeWriter(const BlockStripes& stripes, const Registry& registry,
                                     StripeView v)
    : stripes_(stripes),
      registry_(registry),
      v_(v),
      guard_(v.h, [&stripes, v] { RepairBlockStripe(stripes.sg(), v); }) {}

BlockStripeWriter::~BlockStripeWriter() {
  if (corrupt_ && guard_.ok()) RepairBlockStripe(stripes_.sg(), v_);
}

void BlockStripeWriter::SetRefs(uint32_t block, HolderSlot* slot, PublisherId p, Tier tier,
                                uint8_t refs) {
  St(*slot, PackHolder(p, tier, refs));
  Touch(block);
}

absl::Status BlockStripeWriter::MakeRoom(PublisherId p, PublisherSlot& ps, uint32_t block) {
  uint64_t quota = Ld(ps.id.quota_pairs);
  if (quota != 0 && Ld(ps.index.pairs) >= quota) {
    if (!EvictForQuota(p, block)) {
      AddRelaxed(ps.index.rejected_stores, uint64_t{1});
      return absl::ResourceExhaustedError("publisher quota reached, nothing of it to evict");
    }
    AddRelaxed(ps.index.quota_evictions, uint64_t{1});
  }
  uint32_t evictions = 0;
  while (!HasRoomOn(block)) {
    // A corrupt stripe (found while evicting) is repaired when this writer ends; the store is
    // refused rather than evicting on through links that cannot be trusted.
    if (corrupt_ || Overran(evictions, stripes_.sg().blocks_per_stripe) || !EvictOldest(block)) {
      AddRelaxed(ps.index.rejected_stores, uint64_t{1});
      return absl::ResourceExhaustedError(block == kNil ? "stripe is full"
                                                        : "stripe holder pool is full");
    }
  }
  return absl::OkStatus();
}

void BlockStripeWriter::AddHolder(uint32_t block, PublisherId p, Tier tier, uint8_t refs) {
  HolderSlot packed = PackHolder(p, tier, refs);
  if (HolderSlot* slot = FindFreeSlot(block)) {
    St(*slot, packed);
  } else {
    uint32_t c = Chunk(Ld(v_.h->free_chunks));  // MakeRoom() left one
    if (c == kNil) return;  // a corrupt free list: repaired when the writer ends
    St(v_.h->free_chunks, Chunk(Ld(v_.chunks[c].next)));
    St(v_.chunks[c].slots[0], packed);
    for (int k = 1; k < kChunkHolders; ++k) St(v_.chunks[c].slots[k], HolderSlot{0});
    St(v_.chunks[c].next, Ld(v_.blocks[block].chunk_head));
    St(v_.blocks[block].chunk_head, c);  // publishes the chunk with its holder
  }
  St(v_.blocks[block].holder_set, Ld(v_.blocks[block].holder_set) ^ HolderMix(p, tier));
  St(v_.h->live_residencies, Ld(v_.h->live_residencies) + 1);
  Touch(block);
}

void BlockStripeWriter::InsertBlock(BlockKey key, NamespaceId ns, PublisherId p, Tier tier,
                                    uint8_t refs) {
  uint32_t nb = Block(Ld(v_.h->free_blocks));  // MakeRoom() left one
  if (nb == kNil) return;                      // a corrupt free list: repaired when the writer ends
  St(v_.h->free_blocks, Block(Ld(v_.blocks[nb].next)));
  BlockNode& n = v_.blocks[nb];
  St(n.key, key);
  St(n.chunk_head, kNil);
  St(n.inline_holders[0], PackHolder(p, tier, refs));
  St(n.holder_set, HolderMix(p, tier));
  for (int k = 1; k < kInlineHolders; ++k) St(n.inline_holders[k], HolderSlot{0});
  St(n.ns, ns);
  St(n.in_use, uint16_t{1});
  LruAppend(nb);
  uint32_t* bucket = &v_.buckets[stripes_.bucket(key)];
  St(n.next, Ld(*bucket));
  St(*bucket, nb);  // publishes the block with its holder
  St(v_.h->live_blocks, Ld(v_.h->live_blocks) + 1);
  St(v_.h->live_residencies, Ld(v_.h->live_residencies) + 1);
}

void BlockStripeWriter::ClearSlot(uint32_t block, HolderSlot* slot, uint32_t chunk) {
  HolderSlot old = Ld(*slot);
  St(*slot, HolderSlot{0});
  St(v_.blocks[block].holder_set,
     Ld(v_.blocks[block].holder_set) ^ HolderMix(SlotPublisher(old), SlotTier(old)));
  St(v_.h->live_residencies, Ld(v_.h->live_residencies) - 1);
  if (chunk == kNil) return;
  for (HolderSlot& s : v_.chunks[chunk].slots) {
    if (SlotRefs(Ld(s)) != 0) return;
  }
  uint32_t* link = &v_.blocks[block].chunk_head;
  uint32_t steps = 0;
  while (Ld(*link) != chunk) {
    uint32_t c = Chunk(Ld(*link));
    if (c == kNil || Overran(steps, stripes_.sg().chunks_per_stripe)) {
      corrupt_ = true;
      return;
    }
    link = &v_.chunks[c].next;
  }
  St(*link, Ld(v_.chunks[chunk].next));  // unlinks the chunk
  St(v_.chunks[chunk].next, Ld(v_.h->free_chunks));
  St(v_.h->free_chunks, chunk);
}

void BlockStripeWriter::RemoveHolder(uint32_t block, HolderSlot* slot, uint32_t chunk) {
  ClearSlot(block, slot, chunk);
  if (Empty(block)) DropBlock(block, [](PublisherId) {});
}

void BlockStripeWriter::LruUnlink(uint32_t i) {
  BlockNode& n = v_.blocks[i];
  uint32_t prev = Block(Ld(n.lru_prev));
  uint32_t next = Block(Ld(n.lru_next));
  if (prev != kNil)
    St(v_.blocks[prev].lru_next, next);
  else
    St(v_.h->lru_oldest, next);
  if (next != kNil)
    St(v_.blocks[next].lru_prev, prev);
  else
    St(v_.h->lru_newest, prev);
  St(n.lru_prev, kNil);
  St(n.lru_next, kNil);
}

void BlockStripeWriter::LruAppend(uint32_t i) {
  BlockNode& n = v_.blocks[i];
  uint32_t tail = Block(Ld(v_.h->lru_newest));
  St(n.lru_prev, tail);
  St(n.lru_next, kNil);
  if (tail != kNil)
    St(v_.blocks[tail].lru_next, i);
  else
    St(v_.h->lru_oldest, i);
  St(v_.h->lru_newest, i);
  uint32_t t = Ld(v_.h->tick);
  St(n.tick, t);
  St(v_.h->tick, t + 1);
}

void BlockStripeWriter::Touch(uint32_t i) {
  if (Ld(v_.h->lru_newest) == i) {
    uint32_t t = Ld(v_.h->tick);
    St(v_.blocks[i].tick, t);
    St(v_.h->tick, t + 1);
    return;
  }
  LruUnlink(i);
  LruAppend(i);
}

template <typename F>
void BlockStripeWriter::DropBlock(uint32_t i, F&& on_drop) {
  BlockNode& n = v_.blocks[i];
  uint32_t* link = &v_.buckets[stripes_.bucket(Ld(n.key))];
  uint32_t steps = 0;
  while (Ld(*link) != i) {
    uint32_t b = Block(Ld(*link));
    if (b == kNil || Overran(steps, stripes_.sg().blocks_per_stripe)) {
      corrupt_ = true;  // not reachable from its bucket: the repair frees it
      return;
    }
    link = &v_.blocks[b].next;
  }
  St(*link, Ld(n.next));  // the block is now unreachable: one store
  LruUnlink(i);
  uint32_t dropped = 0;
  ForEachSlot(i, [&](HolderSlot& slot, uint32_t) {
    HolderSlot s = Ld(slot);
    if (SlotRefs(s) != 0) {
      on_drop(SlotPublisher(s));
      ++dropped;
    }
    St(slot, HolderSlot{0});
    return false;
  });
  uint32_t c = Chunk(Ld(n.chunk_head));
  St(n.chunk_head, kNil);
  for (uint32_t chunk_steps = 0; c != kNil;) {
    if (Overran(chunk_steps, stripes_.sg().chunks_per_stripe)) break;
    uint32_t next = Chunk(Ld(v_.chunks[c].next));
    St(v_.chunks[c].next, Ld(v_.h->free_chunks));
    St(v_.h->free_chunks, c);
    c = next;
  }
  St(v_.h->live_residencies, Ld(v_.h->live_residencies) - dropped);
  St(n.in_use, uint16_t{0});
  St(n.next, Ld(v_.h->free_blocks));
  St(v_.h->free_blocks, i);
  St(v_.h->live_blocks, Ld(v_.h->live_blocks) - 1);
}

bool BlockStripeWriter::EvictOldest(uint32_t keep) {
  uint32_t i = Block(Ld(v_.h->lru_oldest));
  if (i == keep && i != kNil) i = Block(Ld(v_.blocks[i].lru_next));
  if (i == kNil) return false;
  DropBlock(i, [this](PublisherId p) { registry_.NotePairDropped(p, /*evicted=*/true); });
  AddRelaxed(v_.h->evicted_blocks, uint64_t{1});
  return true;
}

bool BlockStripeWriter::EvictForQuota(PublisherId p, uint32_t keep) {
  uint32_t i = Block(Ld(v_.h->lru_oldest));
  for (uint32_t n = 0; i != kNil && n < kQuotaScan; ++n, i = Block(Ld(v_.blocks[i].lru_next))) {
    if (i == keep) continue;
    HolderSlot* hit = nullptr;
    uint32_t hit_chunk = kNil;
    ForEachSlot(i, [&](HolderSlot& slot, uint32_t c) {
      HolderSlot s = Ld(slot);
      if (SlotRefs(s) != 0 && SlotPublisher(s) == p) {
        hit = &slot;
        hit_chunk = c;
      }
      return hit != nullptr;
    });
    if (hit == nullptr) continue;
    registry_.NotePairDropped(p, /*evicted=*/true);
    RemoveHolder(i, hit, hit_chunk);
    return true;
  }
  return false;
}

uint32_t BlockStripeWriter::DropPublisher(PublisherId p) {
  if (Ld(v_.h->live_residencies) == 0) return 0;
  uint32_t dropped = 0;
  const StripeGeometry& sg = stripes_.sg();
  std::vector<std::pair<HolderSlot*, uint32_t>> mine;
  for (uint32_t b = 0; b < sg.buckets_per_stripe; ++b) {
    uint32_t i = Block(Ld(v_.buckets[b]));
    for (uint32_t steps = 0; i != kNil && !Overran(steps, sg.blocks_per_stripe);) {
      uint32_t next_block = Block(Ld(v_.blocks[i].next));
      // Collect first: clearing a slot may free the chunk being walked.
      mine.clear();
      ForEachSlot(i, [&](HolderSlot& slot, uint32_t c) {
        HolderSlot hs = Ld(slot);
        if (SlotRefs(hs) != 0 && SlotPublisher(hs) == p) mine.emplace_back(&slot, c);
        return false;
      });
      for (auto& [slot, c] : mine) ClearSlot(i, slot, c);
      dropped += static_cast<uint32_t>(mine.size());
      if (!mine.empty() && Empty(i)) DropBlock(i, [](PublisherId) {});
      i = next_block;
    }
  }
  return dropped;
}

uint64_t BlockStripeWriter::DropNamespace(NamespaceId ns) {
  if (Ld(v_.h->live_blocks) == 0) return 0;
  uint64_t dropped = 0;
  for (uint32_t b = 0; b < stripes_.sg().buckets_per_stripe; ++b) {
    uint32_t i = Block(Ld(v_.buckets[b]));
    for (uint32_t steps = 0; i != kNil && !Overran(steps, stripes_.sg().blocks_per_stripe);) {
      uint32_t next = Block(Ld(v_.blocks[i].next));
      if (Ld(v_.blocks[i].ns) == ns) {
        DropBlock(i, [this](PublisherId p) { registry_.NotePairDropped(p, /*evicted=*/false); });
        ++dropped;
      }
      i = next;
    }
  }
  return dropped;
}

uint64_t BlockStripeWriter::CountPublisher(PublisherId p) const {
  if (Ld(v_.h->live_residencies) == 0) return 0;
  uint64_t pairs = 0;
  for (uint32_t b = 0; b < stripes_.sg().buckets_per_stripe; ++b) {
    uint32_t steps = 0;
    for (uint32_t i = Block(Ld(v_.buckets[b]));
         i != kNil && !Overran(steps, stripes_.sg().blocks_per_stripe);
         i = Block(Ld(v_.blocks[i].next))) {
      ForEachSlot(i, [&](HolderSlot& slot, uint32_t) {
        HolderSlot hs = Ld(slot);
        pairs += SlotRefs(hs) != 0 && SlotPublisher(hs) == p;
        return false;
      });
    }
  }
  return pairs;
}

}  // namespace kvidx::index::internal
