#include "index/prefix_index.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"

#include "shared/clock.h"
#include "shared/status.h"

namespace kvidx::index {
namespace {

// A reader gives up validating after this long and reads best-effort instead: a writer that is
// merely descheduled finishes well within it; one that died never will.
constexpr int64_t kMaxReaderWaitNs = 2'000'000;
// How far ahead Lookup prefetches bucket heads (and, at half the distance, block nodes).
constexpr size_t kPrefetchAhead = 4;
// How many of the oldest blocks a quota eviction inspects for the over-quota publisher.
constexpr uint32_t kQuotaScan = 256;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

bool ProcessAlive(int32_t pid) {
  if (pid <= 0) return true;
  return kill(pid, 0) == 0 || errno == EPERM;
}

uint64_t AlignUp(uint64_t v) { return (v + 63) / 64 * 64; }

// getpid() is a system call in glibc 2.36 and the writers record their pid on every lock:
// cache it, and refresh it in a forked child.
std::atomic<int32_t> g_pid{0};
void ResetPidAfterFork() { g_pid.store(0, std::memory_order_relaxed); }
int32_t CachedPid() {
  int32_t pid = g_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const bool registered = [] {
      pthread_atfork(nullptr, nullptr, &ResetPidAfterFork);
      return true;
    }();
    (void)registered;
    pid = static_cast<int32_t>(getpid());
    g_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

// Keeps the compiler from moving stores across a point that crash recovery relies on (the
// journal is complete before the stripe changes). The hardware keeps a thread's own stores in
// order for anyone who looks after that thread is dead.
inline void CompilerBarrier() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// Waits for a stripe's writer. Returns true when the reader should stop validating: the
// writer is dead, or the wait exceeded kMaxReaderWaitNs.
class ReadWait {
 public:
  bool Wait(const int32_t& owner_pid) {
    ++spins_;
    if (spins_ < 64) {
      CpuRelax();
      return false;
    }
    if (start_ == 0) start_ = MonotonicNanos();
    if ((spins_ & 15) == 0) {
      int32_t pid = Ld(owner_pid);
      if (!ProcessAlive(pid)) return true;
      if (MonotonicNanos() - start_ > kMaxReaderWaitNs) return true;
    }
    sched_yield();
    return false;
  }

 private:
  int spins_ = 0;
  int64_t start_ = 0;
};

void CopyString(char* dst, size_t cap, std::string_view src) {
  size_t n = std::min(cap - 1, src.size());
  std::memcpy(dst, src.data(), n);
  std::memset(dst + n, 0, cap - n);
}

std::string_view SlotString(const char* s, size_t cap) { return {s, strnlen(s, cap)}; }

}  // namespace

struct PrefixIndex::StripeView {
  StripeHeader* h;
  uint32_t* buckets;
  BlockNode* blocks;
  HolderChunk* chunks;
};

struct PrefixIndex::EngineView {
  EngineStripeHeader* h;
  uint32_t* buckets;
  EngineNode* nodes;
};

namespace {

// Rebuilds a stripe after its writer died: every chain reachable from the buckets is kept (cut
// at the first out-of-range or repeated index), empty chunks and blocks without holders are
// dropped, and the free lists and the store-order list are rebuilt from what is left. Caller
// holds the stripe lock.
void RepairStripe(const StripeGeometry& sg, StripeHeader* h, uint32_t* buckets, BlockNode* blocks,
                  HolderChunk* chunks) {
  std::vector<uint8_t> seen_block(sg.blocks_per_stripe, 0);
  std::vector<uint8_t> seen_chunk(sg.chunks_per_stripe, 0);
  std::vector<std::pair<uint32_t, uint32_t>> live;  // (tick, block)
  uint32_t live_pairs = 0;
  for (uint32_t b = 0; b < sg.buckets_per_stripe; ++b) {
    uint32_t* link = &buckets[b];
    uint32_t i = Ld(*link);
    while (i != kNil) {
      if (i >= sg.blocks_per_stripe || seen_block[i]) {
        St(*link, kNil);
        break;
      }
      seen_block[i] = 1;
      uint32_t count = 0;
      uint64_t set = 0;
      auto note = [&](HolderSlot& slot) {
        HolderSlot hs = Ld(slot);
        if (SlotRefs(hs) == 0) return 0u;
        set ^= HolderMix(SlotPublisher(hs), SlotTier(hs));
        return 1u;
      };
      for (HolderSlot& slot : blocks[i].inline_holders) count += note(slot);
      uint32_t* clink = &blocks[i].chunk_head;
      uint32_t c = Ld(*clink);
      while (c != kNil) {
        if (c >= sg.chunks_per_stripe || seen_chunk[c]) {
          St(*clink, kNil);
          break;
        }
        uint32_t in_chunk = 0;
        for (HolderSlot& slot : chunks[c].slots) in_chunk += note(slot);
        if (in_chunk == 0) {  // an empty chunk is unlinked (and freed below)
          St(*clink, Ld(chunks[c].next));
          c = Ld(*clink);
          continue;
        }
        seen_chunk[c] = 1;
        count += in_chunk;
        clink = &chunks[c].next;
        c = Ld(*clink);
      }
      if (count == 0) {  // a block without holders is not kept
        seen_block[i] = 0;
        uint32_t next = Ld(blocks[i].next);
        St(*link, next);
        i = next;
        continue;
      }
      live_pairs += count;
      St(blocks[i].holder_set, set);
      St(blocks[i].in_use, uint16_t{1});
      live.emplace_back(Ld(blocks[i].tick), i);
      link = &blocks[i].next;
      i = Ld(*link);
    }
  }
  std::sort(live.begin(), live.end());
  uint32_t prev = kNil;
  for (auto& [tick, i] : live) {
    St(blocks[i].lru_prev, prev);
    St(blocks[i].lru_next, kNil);
    if (prev != kNil) St(blocks[prev].lru_next, i);
    prev = i;
  }
  St(h->lru_oldest, live.empty() ? kNil : live.front().second);
  St(h->lru_newest, prev);
  St(h->tick, live.empty() ? 0u : live.back().first + 1);
  uint32_t free_head = kNil;
  for (uint32_t i = sg.blocks_per_stripe; i-- > 0;) {
    if (seen_block[i]) continue;
    St(blocks[i].in_use, uint16_t{0});
    St(blocks[i].chunk_head, kNil);
    for (HolderSlot& slot : blocks[i].inline_holders) St(slot, HolderSlot{0});
    St(blocks[i].next, free_head);
    free_head = i;
  }
  St(h->free_blocks, free_head);
  free_head = kNil;
  for (uint32_t c = sg.chunks_per_stripe; c-- > 0;) {
    if (seen_chunk[c]) continue;
    for (HolderSlot& slot : chunks[c].slots) St(slot, HolderSlot{0});
    St(chunks[c].next, free_head);
    free_head = c;
  }
  St(h->free_chunks, free_head);
  St(h->live_blocks, static_cast<uint32_t>(live.size()));
  St(h->live_residencies, live_pairs);
  AddRelaxed(h->repairs, uint64_t{1});
}

void RepairEngineStripe(const StripeGeometry& sg, EngineStripeHeader* h, uint32_t* buckets,
                        EngineNode* nodes) {
  std::vector<uint8_t> seen(sg.engine_nodes_per_stripe, 0);
  uint32_t live = 0;
  for (uint32_t b = 0; b < sg.engine_buckets_per_stripe; ++b) {
    uint32_t* link = &buckets[b];
    uint32_t i = Ld(*link);
    while (i != kNil) {
      if (i >= sg.engine_nodes_per_stripe || seen[i]) {
        St(*link, kNil);
        break;
      }
      seen[i] = 1;
      ++live;
      link = &nodes[i].next;
      i = Ld(*link);
    }
  }
  uint32_t free_head = kNil;
  for (uint32_t i = sg.engine_nodes_per_stripe; i-- > 0;) {
    if (seen[i]) continue;
    St(nodes[i].next, free_head);
    free_head = i;
  }
  St(h->free_nodes, free_head);
  St(h->live_nodes, live);
  AddRelaxed(h->repairs, uint64_t{1});
}

}  // namespace

StripeWriteHook g_stripe_write_hook = nullptr;

// Holds a stripe (block or engine) for writing: its robust lock, repairing the stripe through
// `repair` if the previous holder died, and an odd seqlock version until destroyed.
template <typename Header>
class StripeWriteGuard {
 public:
  template <typename Repair>
  StripeWriteGuard(Header* h, Repair&& repair) : h_(h) {
    auto r = h_->mu.Lock();
    if (r == RobustMutex::LockResult::kUnrecoverable) {
      ok_ = false;
      return;
    }
    // The owner is recorded before the version turns odd, so a reader that sees an odd
    // version can always tell whether its writer is alive. A dead writer may have left the
    // version odd already; then it stays odd and the destructor makes it even.
    St(h_->owner_pid, CachedPid());
    uint64_t ver = Ld(h_->version);
    if ((ver & 1) == 0) St(h_->version, ver + 1);
    // Release: readers that see a later version see the odd one first (pairs with their
    // acquire fence before the re-check).
    std::atomic_thread_fence(std::memory_order_release);
    if (r == RobustMutex::LockResult::kOwnerDied) {
      repair();
      h_->mu.MarkConsistent();
    }
    if (g_stripe_write_hook != nullptr) [[unlikely]]
      g_stripe_write_hook(false);
  }
  ~StripeWriteGuard() {
    if (!ok_) return;
    if (g_stripe_write_hook != nullptr) [[unlikely]]
      g_stripe_write_hook(true);
    // Release: every data store above is visible before the even version. The owner is
    // cleared only after, for the same reason it is set before.
    __atomic_store_n(&h_->version, (Ld(h_->version) | 1) + 1, __ATOMIC_RELEASE);
    St(h_->owner_pid, 0);
    h_->mu.Unlock();
  }
  StripeWriteGuard(const StripeWriteGuard&) = delete;
  StripeWriteGuard& operator=(const StripeWriteGuard&) = delete;
  bool ok() const { return ok_; }

 private:
  Header* h_;
  bool ok_ = true;
};

// Holds a block stripe for writing: the robust lock (repairing the stripe if its holder died)
// and an odd seqlock version for the duration.
class PrefixIndex::StripeWriter {
 public:
  StripeWriter(const PrefixIndex* index, StripeView v)
      : idx_(index),
        v_(v),
        guard_(v.h, [index, v] { RepairStripe(index->sg_, v.h, v.buckets, v.blocks, v.chunks); }) {}
  StripeWriter(const StripeWriter&) = delete;
  StripeWriter& operator=(const StripeWriter&) = delete;

  bool ok() const { return guard_.ok(); }
  const StripeView& view() const { return v_; }

  uint32_t Bucket(BlockKey key) const { return key & (idx_->sg_.buckets_per_stripe - 1); }

  // The block node of `key`, or kNil.
  uint32_t Find(BlockKey key) const {
    uint32_t i = Ld(v_.buckets[Bucket(key)]);
    while (i != kNil && Ld(v_.blocks[i].key) != key) i = Ld(v_.blocks[i].next);
    return i;
  }

  // Calls fn(slot, chunk) for every slot of `block` (chunk is kNil for inline slots) until fn
  // returns true; returns whether it did.
  template <typename F>
  bool ForEachSlot(uint32_t block, F&& fn) const {
    for (HolderSlot& slot : v_.blocks[block].inline_holders) {
      if (fn(slot, kNil)) return true;
    }
    for (uint32_t c = Ld(v_.blocks[block].chunk_head); c != kNil; c = Ld(v_.chunks[c].next)) {
      for (HolderSlot& slot : v_.chunks[c].slots) {
        if (fn(slot, c)) return true;
      }
    }
    return false;
  }

  // The occupied slot of (p, tier) on `block`, or nullptr; `chunk` receives its chunk.
  HolderSlot* FindSlot(uint32_t block, PublisherId p, Tier tier, uint32_t* chunk) const {
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

  HolderSlot* FindFreeSlot(uint32_t block) const {
    HolderSlot* found = nullptr;
    ForEachSlot(block, [&](HolderSlot& slot, uint32_t) {
      if (SlotRefs(Ld(slot)) == 0) found = &slot;
      return found != nullptr;
    });
    return found;
  }

  bool Empty(uint32_t block) const {
    return !ForEachSlot(block, [](HolderSlot& slot, uint32_t) { return SlotRefs(Ld(slot)) != 0; });
  }

  // Occupies a free slot of `block` (one 32-bit store), taking a chunk from the free list when
  // the block has none free. False if neither is available.
  bool AddHolder(uint32_t block, PublisherId p, Tier tier, uint8_t refs) {
    HolderSlot packed = PackHolder(p, tier, refs);
    if (HolderSlot* slot = FindFreeSlot(block)) {
      St(*slot, packed);
    } else {
      uint32_t c = Ld(v_.h->free_chunks);
      if (c == kNil) return false;
      St(v_.h->free_chunks, Ld(v_.chunks[c].next));
      St(v_.chunks[c].slots[0], packed);
      for (int k = 1; k < kChunkHolders; ++k) St(v_.chunks[c].slots[k], HolderSlot{0});
      St(v_.chunks[c].next, Ld(v_.blocks[block].chunk_head));
      St(v_.blocks[block].chunk_head, c);  // publishes the chunk with its holder
    }
    St(v_.blocks[block].holder_set, Ld(v_.blocks[block].holder_set) ^ HolderMix(p, tier));
    St(v_.h->live_residencies, Ld(v_.h->live_residencies) + 1);
    return true;
  }

  // Frees `slot` (one store); frees its chunk too when that leaves the chunk empty.
  void ClearSlot(uint32_t block, HolderSlot* slot, uint32_t chunk) {
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
    while (Ld(*link) != chunk) link = &v_.chunks[Ld(*link)].next;
    St(*link, Ld(v_.chunks[chunk].next));  // unlinks the chunk
    St(v_.chunks[chunk].next, Ld(v_.h->free_chunks));
    St(v_.h->free_chunks, chunk);
  }

  bool HasFreeChunk() const { return Ld(v_.h->free_chunks) != kNil; }

  void LruUnlink(uint32_t i) {
    BlockNode& n = v_.blocks[i];
    uint32_t prev = Ld(n.lru_prev);
    uint32_t next = Ld(n.lru_next);
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

  void LruAppend(uint32_t i) {
    BlockNode& n = v_.blocks[i];
    uint32_t tail = Ld(v_.h->lru_newest);
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

  void Touch(uint32_t i) {
    if (Ld(v_.h->lru_newest) == i) {
      uint32_t t = Ld(v_.h->tick);
      St(v_.blocks[i].tick, t);
      St(v_.h->tick, t + 1);
      return;
    }
    LruUnlink(i);
    LruAppend(i);
  }

  uint32_t PopBlock() {
    uint32_t i = Ld(v_.h->free_blocks);
    if (i != kNil) St(v_.h->free_blocks, Ld(v_.blocks[i].next));
    return i;
  }
  // Unlinks block `i` from its bucket and the store-order list and frees it with every holder
  // still on it; `on_drop` is called for each dropped holder's publisher.
  template <typename F>
  void DropBlock(uint32_t i, F&& on_drop) {
    BlockNode& n = v_.blocks[i];
    uint32_t* link = &v_.buckets[Bucket(Ld(n.key))];
    while (Ld(*link) != i) link = &v_.blocks[Ld(*link)].next;
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
    uint32_t c = Ld(n.chunk_head);
    St(n.chunk_head, kNil);
    while (c != kNil) {
      uint32_t next = Ld(v_.chunks[c].next);
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

  // Evicts the least recently stored block other than `keep`. False if there is none.
  bool EvictOldest(uint32_t keep) {
    uint32_t i = Ld(v_.h->lru_oldest);
    if (i == keep && i != kNil) i = Ld(v_.blocks[i].lru_next);
    if (i == kNil) return false;
    DropBlock(i, [this](PublisherId p) { idx_->NoteEvicted(p); });
    AddRelaxed(v_.h->evicted_blocks, uint64_t{1});
    return true;
  }

  // Drops the least recently stored holder slot of `p` in this stripe (not on `keep`).
  bool EvictForQuota(PublisherId p, uint32_t keep) {
    uint32_t i = Ld(v_.h->lru_oldest);
    for (uint32_t n = 0; i != kNil && n < kQuotaScan; ++n, i = Ld(v_.blocks[i].lru_next)) {
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
      ClearSlot(i, hit, hit_chunk);
      idx_->NoteEvicted(p);
      if (Empty(i)) DropBlock(i, [](PublisherId) {});
      return true;
    }
    return false;
  }

 private:
  const PrefixIndex* idx_;
  StripeView v_;
  StripeWriteGuard<StripeHeader> guard_;
};

class PrefixIndex::EngineWriter {
 public:
  EngineWriter(const PrefixIndex* index, EngineView v)
      : idx_(index),
        v_(v),
        guard_(v.h, [index, v] { RepairEngineStripe(index->sg_, v.h, v.buckets, v.nodes); }) {}
  EngineWriter(const EngineWriter&) = delete;
  EngineWriter& operator=(const EngineWriter&) = delete;
  bool ok() const { return guard_.ok(); }

 private:
  friend class PrefixIndex;
  const PrefixIndex* idx_;
  EngineView v_;
  StripeWriteGuard<EngineStripeHeader> guard_;
};

// ---------------------------------------------------------------------------------------------

PrefixIndex::PrefixIndex(const Segment* segment)
    : segment_(segment),
      base_(segment->base()),
      header_(segment->header()),
      read_only_(segment->read_only()),
      sg_(segment->header()->stripe_geometry) {}

PrefixIndex::StripeView PrefixIndex::stripe(uint32_t s) const {
  char* p = base_ + header_->stripes_offset + s * header_->stripe_stride;
  StripeView v;
  v.h = reinterpret_cast<StripeHeader*>(p);
  p += AlignUp(sizeof(StripeHeader));
  v.buckets = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(uint64_t{sg_.buckets_per_stripe} * 4);
  v.blocks = reinterpret_cast<BlockNode*>(p);
  p += AlignUp(uint64_t{sg_.blocks_per_stripe} * sizeof(BlockNode));
  v.chunks = reinterpret_cast<HolderChunk*>(p);
  return v;
}

PrefixIndex::StripeView PrefixIndex::stripe_for(BlockKey key) const {
  return stripe(static_cast<uint32_t>(key >> 40) & (header_->geometry.stripes - 1));
}

PrefixIndex::EngineView PrefixIndex::engine_stripe(uint32_t s) const {
  char* p = base_ + header_->engine_stripes_offset + s * header_->engine_stripe_stride;
  EngineView v;
  v.h = reinterpret_cast<EngineStripeHeader*>(p);
  p += AlignUp(sizeof(EngineStripeHeader));
  v.buckets = reinterpret_cast<uint32_t*>(p);
  p += AlignUp(uint64_t{sg_.engine_buckets_per_stripe} * 4);
  v.nodes = reinterpret_cast<EngineNode*>(p);
  return v;
}

PrefixIndex::EngineView PrefixIndex::engine_stripe_for(uint64_t mixed) const {
  return engine_stripe(static_cast<uint32_t>(mixed >> 40) & (sg_.engine_stripes - 1));
}

uint64_t PrefixIndex::EngineMix(uint64_t engine_hash, NamespaceId ns, uint16_t scope) {
  return Mix64(engine_hash ^ (uint64_t{ns} << 48) ^ (uint64_t{scope} << 32) ^
               0x9e3779b97f4a7c15ULL);
}

NamespaceSlot* PrefixIndex::ns_slot(NamespaceId ns) const {
  if (ns >= header_->geometry.namespaces) return nullptr;
  return reinterpret_cast<NamespaceSlot*>(base_ + header_->namespaces_offset) + ns;
}

PublisherSlot* PrefixIndex::pub_slot(PublisherId p) const {
  if (p >= header_->geometry.publishers) return nullptr;
  return reinterpret_cast<PublisherSlot*>(base_ + header_->publishers_offset) + p;
}

const NamespaceSlot* PrefixIndex::namespace_slot(NamespaceId ns) const {
  NamespaceSlot* s = ns_slot(ns);
  return s != nullptr && __atomic_load_n(&s->in_use, __ATOMIC_ACQUIRE) ? s : nullptr;
}

const PublisherSlot* PrefixIndex::publisher_slot(PublisherId p) const {
  PublisherSlot* s = pub_slot(p);
  return s != nullptr && __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) ==
                             static_cast<uint32_t>(PublisherState::kActive)
             ? s
             : nullptr;
}

PublisherSlot* PrefixIndex::mutable_publisher_slot(PublisherId p) {
  if (read_only_) return nullptr;
  return const_cast<PublisherSlot*>(publisher_slot(p));
}

uint16_t PrefixIndex::ScopeFor(PublisherId p) const {
  if (p == kAnyPublisher) return 0;
  const PublisherSlot* s = pub_slot(p);
  return s != nullptr && (Ld(s->flags) & kPrivateEngineHashes) ? static_cast<uint16_t>(p + 1) : 0;
}

void PrefixIndex::NoteEvicted(PublisherId p) const {
  PublisherSlot* s = pub_slot(p);
  if (s == nullptr) return;
  AddRelaxed(s->pairs, uint64_t(-1));
  AddRelaxed(s->evicted_pairs, uint64_t{1});
}

absl::StatusOr<PublisherSlot*> PrefixIndex::WritablePublisher(PublisherId p) {
  if (read_only_) return absl::FailedPreconditionError("index is attached read-only");
  PublisherSlot* s = mutable_publisher_slot(p);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("no publisher with id ", p));
  return s;
}

// --- Registration --------------------------------------------------------------------------

absl::StatusOr<NamespaceId> PrefixIndex::RegisterNamespace(const NamespaceSpec& spec) {
  if (read_only_) return absl::FailedPreconditionError("index is attached read-only");
  if (spec.model.empty() || spec.model.size() >= sizeof(NamespaceSlot::model) ||
      spec.lora_name.size() >= sizeof(NamespaceSlot::lora_name)) {
    return absl::InvalidArgumentError("namespace: model must be 1..119 bytes, LoRA name < 64");
  }
  if (spec.block_size == 0 || spec.block_size > 65536) {
    return absl::InvalidArgumentError("namespace: block size must be 1..65536 tokens");
  }
  RobustLockGuard guard(header_->admin_mu);
  if (guard.unrecoverable()) return absl::InternalError("admin lock unrecoverable");
  if (guard.owner_died()) guard.Repaired();  // slots are published by one store: nothing to fix
  std::optional<NamespaceId> free_slot;
  for (uint32_t i = 0; i < header_->geometry.namespaces; ++i) {
    NamespaceSlot* s = ns_slot(i);
    if (!Ld(s->in_use)) {
      if (!free_slot) free_slot = static_cast<NamespaceId>(i);
      continue;
    }
    if (SlotString(s->model, sizeof(s->model)) == spec.model &&
        SlotString(s->lora_name, sizeof(s->lora_name)) == spec.lora_name) {
      St(s->block_size, spec.block_size);
      St(s->flags, spec.key_by_engine_hash ? uint32_t{kKeyByEngineHash} : 0u);
      St(s->lora_id, spec.lora_id);
      return static_cast<NamespaceId>(i);
    }
  }
  if (!free_slot) return absl::ResourceExhaustedError("namespace table is full");
  NamespaceSlot* s = ns_slot(*free_slot);
  CopyString(s->model, sizeof(s->model), spec.model);
  CopyString(s->lora_name, sizeof(s->lora_name), spec.lora_name);
  St(s->block_size, spec.block_size);
  St(s->flags, spec.key_by_engine_hash ? uint32_t{kKeyByEngineHash} : 0u);
  St(s->lora_id, spec.lora_id);
  St(s->root, NamespaceRoot(spec.model, spec.lora_name));
  __atomic_store_n(&s->in_use, 1u, __ATOMIC_RELEASE);
  AddRelaxed(header_->registry_version, uint64_t{1});
  return *free_slot;
}

std::optional<NamespaceId> PrefixIndex::FindNamespace(std::string_view model,
                                                      std::string_view lora_name) const {
  for (uint32_t i = 0; i < header_->geometry.namespaces; ++i) {
    const NamespaceSlot* s = namespace_slot(i);
    if (s != nullptr && SlotString(s->model, sizeof(s->model)) == model &&
        SlotString(s->lora_name, sizeof(s->lora_name)) == lora_name) {
      return static_cast<NamespaceId>(i);
    }
  }
  return std::nullopt;
}

absl::StatusOr<PublisherId> PrefixIndex::RegisterPublisher(const PublisherSpec& spec) {
  if (read_only_) return absl::FailedPreconditionError("index is attached read-only");
  if (spec.pod.empty() || spec.pod.size() >= sizeof(PublisherSlot::pod)) {
    return absl::InvalidArgumentError("publisher: pod name must be 1..63 bytes");
  }
  if (spec.endpoint.size() >= sizeof(PublisherSlot::endpoint) ||
      spec.replay_endpoint.size() >= sizeof(PublisherSlot::replay_endpoint) ||
      spec.topic.size() >= sizeof(PublisherSlot::topic) ||
      spec.dialect.size() >= sizeof(PublisherSlot::dialect)) {
    return absl::InvalidArgumentError("publisher: endpoint, topic or dialect too long");
  }
  if (namespace_slot(spec.ns) == nullptr) {
    return absl::NotFoundError(absl::StrCat("publisher: no namespace with id ", spec.ns));
  }
  RobustLockGuard guard(header_->admin_mu);
  if (guard.unrecoverable()) return absl::InternalError("admin lock unrecoverable");
  if (guard.owner_died()) guard.Repaired();
  std::optional<PublisherId> slot;
  bool existing = false;
  for (uint32_t i = 0; i < header_->geometry.publishers; ++i) {
    PublisherSlot* s = pub_slot(i);
    if (Ld(s->state) != static_cast<uint32_t>(PublisherState::kActive)) {
      if (!slot) slot = static_cast<PublisherId>(i);
      continue;
    }
    if (SlotString(s->pod, sizeof(s->pod)) == spec.pod && Ld(s->dp_rank) == spec.dp_rank) {
      slot = static_cast<PublisherId>(i);
      existing = true;
      break;
    }
  }
  if (!slot) return absl::ResourceExhaustedError("publisher table is full");
  PublisherSlot* s = pub_slot(*slot);
  if (!existing) {
    // Counters and sequence state start from zero; the epoch continues across reuse of the slot
    // so that a reader never sees an old epoch for a new publisher.
    uint64_t epoch = Ld(s->epoch);
    std::memset(static_cast<void*>(s), 0, sizeof(PublisherSlot));
    St(s->epoch, epoch + 1);
    CopyString(s->pod, sizeof(s->pod), spec.pod);
    St(s->dp_rank, spec.dp_rank);
  }
  St(s->ns, uint32_t{spec.ns});
  St(s->worker, spec.worker);
  St(s->quota_pairs, spec.quota_pairs);
  St(s->flags, spec.private_engine_hashes ? uint32_t{kPrivateEngineHashes} : 0u);
  CopyString(s->endpoint, sizeof(s->endpoint), spec.endpoint);
  CopyString(s->replay_endpoint, sizeof(s->replay_endpoint), spec.replay_endpoint);
  CopyString(s->topic, sizeof(s->topic), spec.topic);
  CopyString(s->dialect, sizeof(s->dialect), spec.dialect);
  __atomic_store_n(&s->state, static_cast<uint32_t>(PublisherState::kActive), __ATOMIC_RELEASE);
  AddRelaxed(header_->registry_version, uint64_t{1});
  return *slot;
}

std::optional<PublisherId> PrefixIndex::FindPublisher(std::string_view pod,
                                                      uint32_t dp_rank) const {
  for (uint32_t i = 0; i < header_->geometry.publishers; ++i) {
    const PublisherSlot* s = publisher_slot(i);
    if (s != nullptr && SlotString(s->pod, sizeof(s->pod)) == pod && Ld(s->dp_rank) == dp_rank) {
      return static_cast<PublisherId>(i);
    }
  }
  return std::nullopt;
}

absl::Status PrefixIndex::UnregisterPublisher(PublisherId p) {
  KVIDX_ASSIGN_OR_RETURN(PublisherSlot * s, WritablePublisher(p));
  ClearPublisherStripes(p);
  RobustLockGuard guard(header_->admin_mu);
  if (guard.owner_died()) guard.Repaired();
  __atomic_store_n(&s->state, static_cast<uint32_t>(PublisherState::kFree), __ATOMIC_RELEASE);
  AddRelaxed(header_->registry_version, uint64_t{1});
  return absl::OkStatus();
}

std::vector<PublisherId> PrefixIndex::ActivePublishers() const {
  std::vector<PublisherId> out;
  for (uint32_t i = 0; i < header_->geometry.publishers; ++i) {
    if (publisher_slot(i) != nullptr) out.push_back(static_cast<PublisherId>(i));
  }
  return out;
}

std::vector<NamespaceId> PrefixIndex::ActiveNamespaces() const {
  std::vector<NamespaceId> out;
  for (uint32_t i = 0; i < header_->geometry.namespaces; ++i) {
    if (namespace_slot(i) != nullptr) out.push_back(static_cast<NamespaceId>(i));
  }
  return out;
}

// --- Writes --------------------------------------------------------------------------------

void PrefixIndex::Ack(PublisherSlot& ps, uint64_t op_index) {
  // Never backwards: resume counts from here.
  if (op_index > Ld(ps.applied_ops)) St(ps.applied_ops, op_index);
  CompilerBarrier();
  St(ps.journal.op, static_cast<uint32_t>(JournalOp::kNone));
}

absl::Status PrefixIndex::ApplyStore(PublisherId p, PublisherSlot& ps, Tier tier,
                                     uint64_t engine_hash, BlockKey key, NamespaceId ns,
                                     std::optional<uint8_t> redo_refs) {
  const uint64_t op_index = Ld(ps.applied_ops) + 1;
  auto journal = [&](uint8_t target) {
    if (redo_refs) return;  // recovering: the journal already says this
    St(ps.journal.tier, static_cast<uint8_t>(tier));
    St(ps.journal.target_refs, target);
    St(ps.journal.ns, ns);
    St(ps.journal.op_index, op_index);
    St(ps.journal.block_key, key);
    St(ps.journal.engine_hash, engine_hash);
    CompilerBarrier();
    St(ps.journal.op, static_cast<uint32_t>(JournalOp::kStore));
    CompilerBarrier();
  };
  bool duplicate = false;
  {
    StripeWriter w(this, stripe_for(key));
    if (!w.ok()) return absl::InternalError("stripe lock unrecoverable");
    const StripeView& v = w.view();
    uint32_t b = w.Find(key);
    if (b != kNil) {
      HolderSlot* slot = w.FindSlot(b, p, tier, nullptr);
      if (slot != nullptr) {
        uint8_t refs = SlotRefs(Ld(*slot));
        uint8_t target =
            redo_refs ? *redo_refs : static_cast<uint8_t>(refs == 255 ? 255 : refs + 1);
        journal(target);
        St(*slot, PackHolder(p, tier, target));
        duplicate = !redo_refs;
        w.Touch(b);
      } else {
        uint64_t quota = Ld(ps.quota_pairs);
        if (quota != 0 && Ld(ps.pairs) >= quota) {
          if (!w.EvictForQuota(p, b)) {
            AddRelaxed(ps.rejected_stores, uint64_t{1});
            return absl::ResourceExhaustedError("publisher quota reached, nothing of it to evict");
          }
          AddRelaxed(ps.quota_evictions, uint64_t{1});
        }
        while (w.FindFreeSlot(b) == nullptr && !w.HasFreeChunk()) {
          if (!w.EvictOldest(b)) {
            AddRelaxed(ps.rejected_stores, uint64_t{1});
            return absl::ResourceExhaustedError("stripe holder pool is full");
          }
        }
        uint8_t target = redo_refs ? *redo_refs : 1;
        journal(target);
        w.AddHolder(b, p, tier, target);  // one store publishes the holder
        AddRelaxed(ps.pairs, uint64_t{1});
        w.Touch(b);
      }
    } else {
      uint64_t quota = Ld(ps.quota_pairs);
      if (quota != 0 && Ld(ps.pairs) >= quota) {
        if (!w.EvictForQuota(p, kNil)) {
          AddRelaxed(ps.rejected_stores, uint64_t{1});
          return absl::ResourceExhaustedError("publisher quota reached, nothing of it to evict");
        }
        AddRelaxed(ps.quota_evictions, uint64_t{1});
      }
      while (Ld(v.h->free_blocks) == kNil) {
        if (!w.EvictOldest(kNil)) {
          AddRelaxed(ps.rejected_stores, uint64_t{1});
          return absl::ResourceExhaustedError("stripe is full");
        }
      }
      uint8_t target = redo_refs ? *redo_refs : 1;
      journal(target);
      uint32_t nb = w.PopBlock();
      BlockNode& n = v.blocks[nb];
      St(n.key, key);
      St(n.chunk_head, kNil);
      St(n.inline_holders[0], PackHolder(p, tier, target));
      St(n.holder_set, HolderMix(p, tier));
      for (int k = 1; k < kInlineHolders; ++k) St(n.inline_holders[k], HolderSlot{0});
      St(n.ns, ns);
      St(n.in_use, uint16_t{1});
      w.LruAppend(nb);
      uint32_t* bucket = &v.buckets[w.Bucket(key)];
      St(n.next, Ld(*bucket));
      St(*bucket, nb);  // publishes the block with its holder
      St(v.h->live_blocks, Ld(v.h->live_blocks) + 1);
      St(v.h->live_residencies, Ld(v.h->live_residencies) + 1);
      AddRelaxed(ps.pairs, uint64_t{1});
    }
  }
  const NamespaceSlot* nss = ns_slot(ns);
  if ((Ld(nss->flags) & kKeyByEngineHash) == 0) {
    // After the block exists: a concurrent sweep keeps entries whose block exists.
    // Most stores re-state a mapping that is already there; a validated lock-free read proves
    // it (no writer, hence no sweep, was inside the stripe during the read, and any sweep that
    // starts later sees the block stored above), and saves taking the engine stripe's lock.
    uint16_t scope = ScopeFor(p);
    bool validated = false;
    if (scope == 0 && Ld(ps.engine_hash_conflicts) != 0 &&
        ReadEngineEntry(engine_hash, ns, static_cast<uint16_t>(p + 1), nullptr)) {
      scope = static_cast<uint16_t>(p + 1);  // its own mapping for this hash takes the store
    }
    if (ReadEngineEntry(engine_hash, ns, scope, &validated) != key || !validated) {
      absl::Status es = EnsureEngineEntry(engine_hash, ns, scope, key);
      if (absl::IsAlreadyExists(es)) {
        // The hash names another live block: never change what an existing entry means (its
        // holders' removals and children resolve through it). This publisher's mapping goes to
        // its own scope; a conflict within its own scope (the same unchained page at two
        // positions) cannot be told apart by a removal, and the latest store wins.
        AddRelaxed(ps.engine_hash_conflicts, uint64_t{1});
        es = scope == 0 ? EnsureEngineEntry(engine_hash, ns, static_cast<uint16_t>(p + 1), key)
                        : EnsureEngineEntry(engine_hash, ns, scope, key, /*overwrite=*/true);
      }
      if (absl::IsResourceExhausted(es)) {
        // Without its mapping, the block's removal could never find it: the residency would
        // outlive the engine's copy. Take the store back and refuse it (counted). A redo (the
        // writer died after the store) is taken back the same way and acknowledged here.
        UndoStore(p, ps, tier, key);
        AddRelaxed(ps.rejected_stores, uint64_t{1});
        AddRelaxed(ps.engine_table_full, uint64_t{1});
        if (redo_refs) {
          Ack(ps, op_index);
          return absl::OkStatus();
        }
        return es;  // the caller acknowledges the operation
      }
    }
  }
  AddRelaxed(ps.stored_blocks, uint64_t{1});
  if (duplicate) AddRelaxed(ps.duplicate_stores, uint64_t{1});
  Ack(ps, op_index);
  return absl::OkStatus();
}

void PrefixIndex::UndoStore(PublisherId p, PublisherSlot& ps, Tier tier, BlockKey key) {
  StripeWriter w(this, stripe_for(key));
  if (!w.ok()) return;
  uint32_t b = w.Find(key);
  uint32_t chunk = kNil;
  HolderSlot* slot = b == kNil ? nullptr : w.FindSlot(b, p, tier, &chunk);
  if (slot == nullptr) return;
  uint8_t refs = SlotRefs(Ld(*slot));
  if (refs > 1) {
    St(*slot, PackHolder(p, tier, static_cast<uint8_t>(refs - 1)));
    return;
  }
  w.ClearSlot(b, slot, chunk);
  AddRelaxed(ps.pairs, uint64_t(-1));
  if (w.Empty(b)) w.DropBlock(b, [](PublisherId) {});
}

absl::Status PrefixIndex::ApplyRemove(PublisherId p, PublisherSlot& ps, Tier tier,
                                      uint64_t engine_hash, BlockKey key, NamespaceId ns,
                                      std::optional<uint8_t> redo_refs) {
  const uint64_t op_index = Ld(ps.applied_ops) + 1;
  {
    StripeWriter w(this, stripe_for(key));
    if (!w.ok()) return absl::InternalError("stripe lock unrecoverable");
    uint32_t b = w.Find(key);
    uint32_t chunk = kNil;
    HolderSlot* slot = b == kNil ? nullptr : w.FindSlot(b, p, tier, &chunk);
    if (slot == nullptr) {
      if (redo_refs) {
        Ack(ps, op_index);
        return absl::OkStatus();  // already gone: the redo is complete
      }
      AddRelaxed(ps.unknown_removes, uint64_t{1});
      Ack(ps, op_index);
      return absl::NotFoundError("publisher does not hold that block in that tier");
    }
    uint8_t refs = SlotRefs(Ld(*slot));
    uint8_t target = redo_refs ? *redo_refs : static_cast<uint8_t>(refs - 1);
    if (!redo_refs) {
      St(ps.journal.tier, static_cast<uint8_t>(tier));
      St(ps.journal.target_refs, target);
      St(ps.journal.ns, ns);  // a redo that keeps references re-states the mapping in it
      St(ps.journal.op_index, op_index);
      St(ps.journal.block_key, key);
      St(ps.journal.engine_hash, engine_hash);
      CompilerBarrier();
      St(ps.journal.op, static_cast<uint32_t>(JournalOp::kRemove));
      CompilerBarrier();
    }
    if (target > 0) {
      St(*slot, PackHolder(p, tier, target));
    } else {
      w.ClearSlot(b, slot, chunk);  // one store drops the holder
      AddRelaxed(ps.pairs, uint64_t(-1));
      if (w.Empty(b)) w.DropBlock(b, [](PublisherId) {});
    }
  }
  AddRelaxed(ps.removed_blocks, uint64_t{1});
  Ack(ps, op_index);
  return absl::OkStatus();
}

absl::Status PrefixIndex::EnsureEngineEntry(uint64_t engine_hash, NamespaceId ns, uint16_t scope,
                                            BlockKey key, bool overwrite) {
  uint64_t mixed = EngineMix(engine_hash, ns, scope);
  EngineWriter w(this, engine_stripe_for(mixed));
  if (!w.ok()) return absl::InternalError("engine stripe lock unrecoverable");
  EngineView& v = w.v_;
  uint32_t* bucket = &v.buckets[mixed & (sg_.engine_buckets_per_stripe - 1)];
  for (uint32_t i = Ld(*bucket); i != kNil; i = Ld(v.nodes[i].next)) {
    EngineNode& n = v.nodes[i];
    if (Ld(n.engine_hash) == engine_hash && Ld(n.ns) == ns && Ld(n.scope) == scope) {
      BlockKey old = Ld(n.block_key);
      if (old == key) return absl::OkStatus();
      // A stale entry (its block is gone) is reused; a live one keeps its meaning unless the
      // caller says otherwise.
      if (!overwrite && BlockExists(old)) return absl::AlreadyExistsError("engine hash conflict");
      St(n.block_key, key);
      return absl::OkStatus();
    }
  }
  if (Ld(v.h->free_nodes) == kNil) {
    // Sweep entries whose block is gone. Under this stripe's lock, so an entry whose block a
    // writer has just stored (before taking this lock) is seen to exist and kept. Bounded: at
    // most kSweepBuckets buckets per insert, from where the last sweep stopped, so a stripe full
    // of live entries costs each insert a little, not a pass over the stripe.
    constexpr uint32_t kSweepBuckets = 64;
    const uint32_t nb = sg_.engine_buckets_per_stripe;
    uint32_t cursor = Ld(v.h->sweep_cursor) % nb;
    for (uint32_t step = 0; step < std::min(nb, kSweepBuckets) && Ld(v.h->free_nodes) == kNil;
         ++step, cursor = (cursor + 1) % nb) {
      uint32_t* link = &v.buckets[cursor];
      while (Ld(*link) != kNil) {
        uint32_t i = Ld(*link);
        if (BlockExists(Ld(v.nodes[i].block_key))) {
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
    if (Ld(v.h->free_nodes) == kNil) {
      AddRelaxed(v.h->full, uint64_t{1});
      return absl::ResourceExhaustedError("engine hash table stripe is full");
    }
  }
  uint32_t i = Ld(v.h->free_nodes);
  St(v.h->free_nodes, Ld(v.nodes[i].next));
  EngineNode& n = v.nodes[i];
  St(n.engine_hash, engine_hash);
  St(n.block_key, key);
  St(n.ns, ns);
  St(n.scope, scope);
  St(n.next, Ld(*bucket));
  St(*bucket, i);  // publishes the entry
  St(v.h->live_nodes, Ld(v.h->live_nodes) + 1);
  return absl::OkStatus();
}

absl::StatusOr<StoreResult> PrefixIndex::Store(PublisherId p, const StoreRequest& req) {
  KVIDX_ASSIGN_OR_RETURN(PublisherSlot * ps, WritablePublisher(p));
  const NamespaceId ns = req.ns ? *req.ns : static_cast<NamespaceId>(Ld(ps->ns));
  const NamespaceSlot* nss = namespace_slot(ns);
  if (nss == nullptr) return absl::NotFoundError("store: no such namespace");
  const size_t n = req.engine_hashes.size();
  const uint32_t bs = req.block_size != 0 ? req.block_size : Ld(nss->block_size);
  if (req.tier > kDisk) return absl::InvalidArgumentError("store: unknown tier");
  if (!req.tokens.empty() && (bs == 0 || req.tokens.size() != n * bs)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store: ", req.tokens.size(), " token ids for ", n, " blocks of ", bs));
  }
  if (!req.extra.empty() && req.extra.size() != n) {
    return absl::InvalidArgumentError("store: extra keys must have one entry per block");
  }
  StoreResult result;
  const bool by_engine = (Ld(nss->flags) & kKeyByEngineHash) != 0;
  const BlockKey root = Ld(nss->root);
  auto skip = [&](uint64_t* counter, size_t count) {
    AddRelaxed(*counter, uint64_t{count});
    for (size_t i = 0; i < count; ++i) Ack(*ps, Ld(ps->applied_ops) + 1);
  };
  std::optional<BlockKey> parent = root;
  if (!by_engine && !req.tokens.empty() && req.parent_engine_hash) {
    parent = ResolveEngineHash(ns, p, *req.parent_engine_hash);
    if (!parent) {
      result.orphan = true;
      skip(&ps->orphan_blocks, n);
      return result;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    std::optional<BlockKey> key;
    if (by_engine) {
      key = EngineHashKey(root, req.engine_hashes[i]);
    } else if (!req.tokens.empty()) {
      key = ChainBlockKey(*parent, req.tokens.subspan(i * bs, bs),
                          req.extra.empty() ? std::span<const uint8_t>() : req.extra[i]);
    } else {
      key = ResolveEngineHash(ns, p, req.engine_hashes[i]);
      if (!key) {
        ++result.unresolved;
        skip(&ps->unresolved_blocks, 1);
        continue;
      }
    }
    uint64_t dups_before = Ld(ps->duplicate_stores);
    absl::Status st = ApplyStore(p, *ps, req.tier, req.engine_hashes[i], *key, ns, std::nullopt);
    if (st.ok()) {
      ++result.stored;
      if (Ld(ps->duplicate_stores) != dups_before) ++result.duplicates;
    } else if (absl::IsResourceExhausted(st)) {
      ++result.rejected;
      Ack(*ps, Ld(ps->applied_ops) + 1);
    } else {
      return st;
    }
    parent = key;
  }
  return result;
}

absl::Status PrefixIndex::StoreBlock(PublisherId p, Tier tier, uint64_t engine_hash, BlockKey key) {
  KVIDX_ASSIGN_OR_RETURN(PublisherSlot * ps, WritablePublisher(p));
  if (tier > kDisk) return absl::InvalidArgumentError("store: unknown tier");
  absl::Status st = ApplyStore(p, *ps, tier, engine_hash, key, static_cast<NamespaceId>(Ld(ps->ns)),
                               std::nullopt);
  if (absl::IsResourceExhausted(st)) Ack(*ps, Ld(ps->applied_ops) + 1);
  return st;
}

absl::Status PrefixIndex::SkipOp(PublisherId p, uint64_t PublisherSlot::*counter) {
  KVIDX_ASSIGN_OR_RETURN(PublisherSlot * ps, WritablePublisher(p));
  if (counter != nullptr) AddRelaxed(ps->*counter, uint64_t{1});
  Ack(*ps, Ld(ps->applied_ops) + 1);
  return absl::OkStatus();
}

absl::Status PrefixIndex::Remove(PublisherId p, Tier tier, uint64_t engine_hash,
                                 std::optional<NamespaceId> ns_override) {
  KVIDX_ASSIGN_OR_RETURN(PublisherSlot * ps, WritablePublisher(p));
  if (tier > kDisk) return absl::InvalidArgumentError("remove: unknown tier");
  NamespaceId ns = ns_override ? *ns_override : static_cast<NamespaceId>(Ld(ps->ns));
  std::optional<BlockKey> key = ResolveEngineHash(ns, p, engine_hash);
  if (!key) {
    AddRelaxed(ps->unknown_removes, uint64_t{1});
    Ack(*ps, Ld(ps->applied_ops) + 1);
    return absl::NotFoundError("unknown engine hash");
  }
  return ApplyRemove(p, *ps, tier, engine_hash, *key, ns, std::nullopt);
}

void PrefixIndex::ClearPublisherStripes(PublisherId p) {
  for (uint32_t s = 0; s < header_->geometry.stripes; ++s) {
    StripeWriter w(this, stripe(s));
    if (!w.ok()) continue;
    const StripeView& v = w.view();
    if (Ld(v.h->live_residencies) == 0) continue;
    for (uint32_t b = 0; b < sg_.buckets_per_stripe; ++b) {
      uint32_t i = Ld(v.buckets[b]);
      while (i != kNil) {
        uint32_t next_block = Ld(v.blocks[i].next);
        // Collect first: clearing a slot may free the chunk being walked.
        std::vector<std::pair<HolderSlot*, uint32_t>> mine;
        w.ForEachSlot(i, [&](HolderSlot& slot, uint32_t c) {
          HolderSlot hs = Ld(slot);
          if (SlotRefs(hs) != 0 && SlotPublisher(hs) == p) mine.emplace_back(&slot, c);
          return false;
        });
        for (auto& [slot, c] : mine) w.ClearSlot(i, slot, c);
        if (!mine.empty() && w.Empty(i)) w.DropBlock(i, [](PublisherId) {});
        i = next_block;
      }
    }
  }
  if (PublisherSlot* ps = pub_slot(p)) St(ps->pairs, uint64_t{0});
}

absl::Status PrefixIndex::ClearPublisher(PublisherId p) {
  KVIDX_ASSIGN_OR_RETURN(PublisherSlot * ps, WritablePublisher(p));
  const uint64_t op_index = Ld(ps->applied_ops) + 1;
  St(ps->journal.op_index, op_index);
  CompilerBarrier();
  St(ps->journal.op, static_cast<uint32_t>(JournalOp::kClear));
  CompilerBarrier();
  ClearPublisherStripes(p);
  AddRelaxed(ps->clears, uint64_t{1});
  Ack(*ps, op_index);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> PrefixIndex::ClearNamespace(NamespaceId ns,
                                                     const std::function<void()>& progress) {
  if (read_only_) return absl::FailedPreconditionError("index is attached read-only");
  if (namespace_slot(ns) == nullptr) return absl::NotFoundError("no such namespace");
  uint64_t dropped = 0;
  for (uint32_t s = 0; s < header_->geometry.stripes; ++s) {
    if (progress && s % kProgressStripes == kProgressStripes - 1) progress();
    StripeWriter w(this, stripe(s));
    if (!w.ok()) continue;
    const StripeView& v = w.view();
    if (Ld(v.h->live_blocks) == 0) continue;
    for (uint32_t b = 0; b < sg_.buckets_per_stripe; ++b) {
      uint32_t i = Ld(v.buckets[b]);
      while (i != kNil) {
        uint32_t next = Ld(v.blocks[i].next);
        if (Ld(v.blocks[i].ns) == ns) {
          w.DropBlock(i, [this](PublisherId p) {
            if (PublisherSlot* ps = pub_slot(p)) AddRelaxed(ps->pairs, uint64_t(-1));
          });
          ++dropped;
        }
        i = next;
      }
    }
  }
  return dropped;
}

// --- Reads ---------------------------------------------------------------------------------

PrefixIndex::ReadResult PrefixIndex::ReadHolders(BlockKey key, std::vector<Holder>& out,
                                                 bool& degraded, uint64_t* holder_set,
                                                 uint64_t same_as) const {
  const StripeView v = stripe_for(key);
  const uint32_t bucket = key & (sg_.buckets_per_stripe - 1);
  const uint32_t max_chunks = header_->geometry.publishers * kNumTiers / kChunkHolders + 2;
  ReadWait wait;
  bool force = false;
  for (;;) {
    // Acquire: the data loads below happen after this version read.
    uint64_t v1 = __atomic_load_n(&v.h->version, __ATOMIC_ACQUIRE);
    if ((v1 & 1) != 0 && !force) {
      force = wait.Wait(v.h->owner_pid);
      continue;
    }
    out.clear();
    bool found = false;
    uint32_t i = Ld(v.buckets[bucket]);
    for (uint32_t steps = 0; i < sg_.blocks_per_stripe && steps < sg_.blocks_per_stripe; ++steps) {
      if (Ld(v.blocks[i].key) == key) {
        found = true;
        break;
      }
      i = Ld(v.blocks[i].next);
    }
    uint64_t set = found ? Ld(v.blocks[i].holder_set) : 0;
    bool same = found && same_as != 0 && set == same_as;
    if (found && !same) {
      // Bounded: inline slots, then at most as many chunks as could hold every publisher.
      auto take = [&](const HolderSlot& slot) {
        HolderSlot hs = Ld(slot);
        if (SlotRefs(hs) != 0) {
          out.push_back(Holder{SlotPublisher(hs), static_cast<Tier>(SlotTier(hs)), SlotRefs(hs)});
        }
      };
      for (const HolderSlot& slot : v.blocks[i].inline_holders) take(slot);
      uint32_t c = Ld(v.blocks[i].chunk_head);
      for (uint32_t steps = 0; c < sg_.chunks_per_stripe && steps < max_chunks; ++steps) {
        const HolderChunk& ch = v.chunks[c];
        __builtin_prefetch(&v.chunks[std::min(Ld(ch.next), sg_.chunks_per_stripe - 1)]);
        for (const HolderSlot& slot : ch.slots) take(slot);
        c = Ld(ch.next);
      }
    }
    ReadResult rr = !found ? ReadResult::kAbsent : same ? ReadResult::kSame : ReadResult::kFound;
    if (holder_set != nullptr) *holder_set = set;
    if (force) {
      degraded = true;
      return rr;
    }
    // Acquire fence: the data loads above complete before the version is read again.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (__atomic_load_n(&v.h->version, __ATOMIC_RELAXED) == v1) return rr;
    force = wait.Wait(v.h->owner_pid);
  }
}

bool PrefixIndex::BlockExists(BlockKey key) const {
  thread_local std::vector<Holder> scratch;
  bool degraded = false;
  bool found = ReadHolders(key, scratch, degraded) != ReadResult::kAbsent;
  return found || degraded;  // when unsure, say it exists: sweeping less is always safe
}

std::vector<Holder> PrefixIndex::Holders(BlockKey key) const {
  std::vector<Holder> out;
  bool degraded = false;
  ReadHolders(key, out, degraded);
  return out;
}

std::optional<BlockKey> PrefixIndex::ResolveEngineHash(NamespaceId ns, PublisherId p,
                                                       uint64_t engine_hash) const {
  const NamespaceSlot* nss = namespace_slot(ns);
  if (nss == nullptr) return std::nullopt;
  if (Ld(nss->flags) & kKeyByEngineHash) return EngineHashKey(Ld(nss->root), engine_hash);
  const uint16_t scope = ScopeFor(p);
  if (scope == 0 && p != kAnyPublisher) {
    // A publisher whose store conflicted with a shared mapping has its own for that hash.
    const PublisherSlot* ps = pub_slot(p);
    if (ps != nullptr && Ld(ps->engine_hash_conflicts) != 0) {
      if (auto own = ReadEngineEntry(engine_hash, ns, static_cast<uint16_t>(p + 1), nullptr))
        return own;
    }
  }
  return ReadEngineEntry(engine_hash, ns, scope, nullptr);
}

std::optional<BlockKey> PrefixIndex::ReadEngineEntry(uint64_t engine_hash, NamespaceId ns,
                                                     uint16_t scope, bool* validated) const {
  const uint64_t mixed = EngineMix(engine_hash, ns, scope);
  const EngineView v = engine_stripe_for(mixed);
  const uint32_t bucket = mixed & (sg_.engine_buckets_per_stripe - 1);
  ReadWait wait;
  bool force = false;
  if (validated != nullptr) *validated = true;
  for (;;) {
    uint64_t v1 = __atomic_load_n(&v.h->version, __ATOMIC_ACQUIRE);
    if ((v1 & 1) != 0 && !force) {
      force = wait.Wait(v.h->owner_pid);
      continue;
    }
    std::optional<BlockKey> result;
    uint32_t i = Ld(v.buckets[bucket]);
    for (uint32_t steps = 0; i < sg_.engine_nodes_per_stripe && steps < sg_.engine_nodes_per_stripe;
         ++steps) {
      const EngineNode& n = v.nodes[i];
      if (Ld(n.engine_hash) == engine_hash && Ld(n.ns) == ns && Ld(n.scope) == scope) {
        result = Ld(n.block_key);
        break;
      }
      i = Ld(n.next);
    }
    if (force) {
      if (validated != nullptr) *validated = false;
      return result;
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (__atomic_load_n(&v.h->version, __ATOMIC_RELAXED) == v1) return result;
    force = wait.Wait(v.h->owner_pid);
  }
}

absl::StatusOr<std::vector<BlockKey>> PrefixIndex::KeysForTokens(
    NamespaceId ns, std::span<const uint32_t> tokens) const {
  const NamespaceSlot* nss = namespace_slot(ns);
  if (nss == nullptr) return absl::NotFoundError(absl::StrCat("no namespace with id ", ns));
  return ChainBlockKeys(Ld(nss->root), tokens, Ld(nss->block_size));
}

LookupResult PrefixIndex::Lookup(std::span<const BlockKey> keys,
                                 const LookupOptions& options) const {
  LookupResult result;
  size_t n = keys.size();
  if (options.max_blocks != 0 && options.max_blocks < n) n = options.max_blocks;
  if (n == 0) return result;
  const uint32_t npub = header_->geometry.publishers;

  // Per-thread scratch indexed by publisher id, stamped instead of cleared.
  struct Scratch {
    std::vector<uint32_t> stamp;
    std::vector<uint8_t> tiers;
    std::vector<uint32_t> allowed;
    std::vector<Holder> holders;
    uint32_t clock = 0;
  };
  thread_local Scratch sc;
  if (sc.stamp.size() < npub) {
    sc.stamp.assign(npub, 0);
    sc.tiers.assign(npub, 0);
    sc.allowed.assign(npub, 0);
    sc.clock = 0;
  }
  if (sc.clock > 0xFFFF0000u - keys.size()) {
    std::fill(sc.stamp.begin(), sc.stamp.end(), 0);
    std::fill(sc.allowed.begin(), sc.allowed.end(), 0);
    sc.clock = 0;
  }
  const uint32_t allow_stamp = ++sc.clock;
  for (PublisherId c : options.candidates) {
    if (c < npub) sc.allowed[c] = allow_stamp;
  }
  const bool filter = !options.candidates.empty();

  struct Cand {
    PublisherId pub;
    uint8_t tiers_alive;
    bool alive;
    uint32_t blocks;
    uint32_t tier_blocks[kNumTiers];
  };
  std::vector<Cand> cands;
  size_t alive = 0;

  auto prefetch_bucket = [&](size_t j) {
    const StripeView v = stripe_for(keys[j]);
    __builtin_prefetch(&v.buckets[keys[j] & (sg_.buckets_per_stripe - 1)]);
  };
  auto prefetch_node = [&](size_t j) {
    const StripeView v = stripe_for(keys[j]);
    uint32_t i = Ld(v.buckets[keys[j] & (sg_.buckets_per_stripe - 1)]);
    if (i < sg_.blocks_per_stripe) __builtin_prefetch(&v.blocks[i]);
  };
  for (size_t j = 0; j < std::min(n, kPrefetchAhead); ++j) prefetch_bucket(j);
  for (size_t j = 0; j < std::min(n, kPrefetchAhead / 2); ++j) prefetch_node(j);

  uint64_t prev_set = 0;
  uint32_t pending = 0;  // blocks whose holder set equals the last one fully read
  auto flush = [&] {
    if (pending == 0) return;
    for (Cand& c : cands) {
      if (!c.alive) continue;
      c.blocks += pending;
      for (int k = 0; k < kNumTiers; ++k) c.tier_blocks[k] += ((c.tiers_alive >> k) & 1u) * pending;
    }
    pending = 0;
  };
  for (size_t i = 0; i < n; ++i) {
    if (i + kPrefetchAhead < n) prefetch_bucket(i + kPrefetchAhead);
    if (i + kPrefetchAhead / 2 < n) prefetch_node(i + kPrefetchAhead / 2);
    uint64_t set = 0;
    ReadResult rr = ReadHolders(keys[i], sc.holders, result.degraded, &set, i == 0 ? 0 : prev_set);
    result.blocks_walked = static_cast<uint32_t>(i + 1);
    if (rr == ReadResult::kSame) {
      // Same holders as the previous block: every live candidate extends its run unchanged.
      ++pending;
      continue;
    }
    flush();
    prev_set = set;
    const bool found = rr == ReadResult::kFound;
    const uint32_t stamp = ++sc.clock;
    if (found) {
      for (const Holder& h : sc.holders) {
        if (h.publisher >= npub || h.tier > kDisk) continue;
        if (filter && sc.allowed[h.publisher] != allow_stamp) continue;
        if (sc.stamp[h.publisher] != stamp) {
          sc.stamp[h.publisher] = stamp;
          sc.tiers[h.publisher] = 0;
        }
        sc.tiers[h.publisher] |= static_cast<uint8_t>(1u << h.tier);
      }
    }
    if (i == 0) {
      if (!found) break;
      for (const Holder& h : sc.holders) {
        if (h.publisher >= npub || sc.stamp[h.publisher] != stamp) continue;
        if (std::any_of(cands.begin(), cands.end(),
                        [&](const Cand& c) { return c.pub == h.publisher; })) {
          continue;
        }
        Cand c{h.publisher, 0, true, 0, {0, 0, 0}};
        cands.push_back(c);
      }
      for (Cand& c : cands) {
        uint8_t t = sc.tiers[c.pub];
        c.blocks = 1;
        c.tiers_alive = t;
        for (int k = 0; k < kNumTiers; ++k) c.tier_blocks[k] = (t >> k) & 1u;
      }
      alive = cands.size();
      if (alive == 0) break;
      continue;
    }
    for (Cand& c : cands) {
      if (!c.alive) continue;
      uint8_t t = sc.stamp[c.pub] == stamp ? sc.tiers[c.pub] : 0;
      if (t == 0) {
        c.alive = false;
        --alive;
        continue;
      }
      ++c.blocks;
      c.tiers_alive &= t;
      for (int k = 0; k < kNumTiers; ++k) c.tier_blocks[k] += (c.tiers_alive >> k) & 1u;
    }
    if (alive == 0) break;
  }
  flush();
  result.matches.reserve(cands.size());
  for (const Cand& c : cands) {
    result.matches.push_back(
        PublisherMatch{c.pub, c.blocks, {c.tier_blocks[0], c.tier_blocks[1], c.tier_blocks[2]}});
  }
  std::sort(result.matches.begin(), result.matches.end(),
            [](const PublisherMatch& a, const PublisherMatch& b) {
              return a.blocks != b.blocks ? a.blocks > b.blocks : a.publisher < b.publisher;
            });
  return result;
}

IndexStats PrefixIndex::Stats() const {
  IndexStats s;
  const Geometry& g = header_->geometry;
  s.segment_bytes = header_->total_size;
  s.block_capacity = uint64_t{sg_.blocks_per_stripe} * g.stripes;
  s.pair_capacity = uint64_t{sg_.pairs_per_stripe} * g.stripes;
  s.engine_capacity = uint64_t{sg_.engine_nodes_per_stripe} * sg_.engine_stripes;
  for (uint32_t i = 0; i < g.stripes; ++i) {
    const StripeView v = stripe(i);
    s.blocks += Ld(v.h->live_blocks);
    s.pairs += Ld(v.h->live_residencies);
    s.evicted_blocks += Ld(v.h->evicted_blocks);
    s.stripe_repairs += Ld(v.h->repairs);
  }
  for (uint32_t i = 0; i < sg_.engine_stripes; ++i) {
    const EngineView v = engine_stripe(i);
    s.engine_entries += Ld(v.h->live_nodes);
    s.engine_swept += Ld(v.h->swept);
    s.engine_full += Ld(v.h->full);
    s.stripe_repairs += Ld(v.h->repairs);
  }
  s.publishers = static_cast<uint32_t>(ActivePublishers().size());
  s.namespaces = static_cast<uint32_t>(ActiveNamespaces().size());
  s.bytes_per_live_pair =
      s.pairs ? static_cast<double>(s.segment_bytes) / static_cast<double>(s.pairs) : 0;
  s.bytes_per_pair_capacity =
      static_cast<double>(s.segment_bytes) / static_cast<double>(s.pair_capacity);
  return s;
}

// --- Recovery ------------------------------------------------------------------------------

absl::Status PrefixIndex::RecoverPublisher(PublisherId p) {
  KVIDX_ASSIGN_OR_RETURN(PublisherSlot * ps, WritablePublisher(p));
  ApplyJournal j;
  j.op = Ld(ps->journal.op);
  j.tier = Ld(ps->journal.tier);
  j.target_refs = Ld(ps->journal.target_refs);
  j.ns = Ld(ps->journal.ns);
  j.op_index = Ld(ps->journal.op_index);
  j.block_key = Ld(ps->journal.block_key);
  j.engine_hash = Ld(ps->journal.engine_hash);
  const uint64_t applied = Ld(ps->applied_ops);
  if (j.op != static_cast<uint32_t>(JournalOp::kNone) && j.op_index == applied + 1) {
    Tier tier = static_cast<Tier>(std::min<uint8_t>(j.tier, kDisk));
    switch (static_cast<JournalOp>(j.op)) {
      case JournalOp::kStore:
        KVIDX_RETURN_IF_ERROR(
            ApplyStore(p, *ps, tier, j.engine_hash, j.block_key, j.ns, j.target_refs));
        break;
      case JournalOp::kRemove:
        // Sets the residency to the journal's reference count (dropping it at 0) if the dead
        // writer did not get to it; the block and its mapping were there before the remove.
        (void)ApplyRemove(p, *ps, tier, j.engine_hash, j.block_key, j.ns, j.target_refs);
        break;
      case JournalOp::kClear:
        ClearPublisherStripes(p);
        AddRelaxed(ps->clears, uint64_t{1});
        Ack(*ps, j.op_index);
        break;
      default:
        break;
    }
  }
  St(ps->journal.op, static_cast<uint32_t>(JournalOp::kNone));
  // Recount the live pairs: a writer killed between a link and its counter left them off.
  uint64_t pairs = 0;
  for (uint32_t s = 0; s < header_->geometry.stripes; ++s) {
    StripeWriter w(this, stripe(s));  // also repairs a stripe its holder abandoned
    if (!w.ok()) continue;
    const StripeView& v = w.view();
    if (Ld(v.h->live_residencies) == 0) continue;
    for (uint32_t b = 0; b < sg_.buckets_per_stripe; ++b) {
      for (uint32_t i = Ld(v.buckets[b]); i != kNil; i = Ld(v.blocks[i].next)) {
        w.ForEachSlot(i, [&](HolderSlot& slot, uint32_t) {
          HolderSlot hs = Ld(slot);
          pairs += SlotRefs(hs) != 0 && SlotPublisher(hs) == p;
          return false;
        });
      }
    }
  }
  St(ps->pairs, pairs);
  return absl::OkStatus();
}

uint32_t PrefixIndex::RepairAbandonedStripes() {
  if (read_only_) return 0;
  uint32_t repaired = 0;
  for (uint32_t s = 0; s < header_->geometry.stripes; ++s) {
    StripeView v = stripe(s);
    if ((Ld(v.h->version) & 1) == 0) continue;
    uint64_t before = Ld(v.h->repairs);
    { StripeWriter w(this, v); }
    repaired += Ld(v.h->repairs) != before;
  }
  for (uint32_t s = 0; s < sg_.engine_stripes; ++s) {
    EngineView v = engine_stripe(s);
    if ((Ld(v.h->version) & 1) == 0) continue;
    uint64_t before = Ld(v.h->repairs);
    { EngineWriter w(this, v); }
    repaired += Ld(v.h->repairs) != before;
  }
  return repaired;
}

uint32_t PrefixIndex::StripesMidUpdate() const {
  uint32_t n = 0;
  for (uint32_t s = 0; s < header_->geometry.stripes; ++s) n += Ld(stripe(s).h->version) & 1;
  for (uint32_t s = 0; s < sg_.engine_stripes; ++s) n += Ld(engine_stripe(s).h->version) & 1;
  return n;
}

std::vector<PrefixIndex::Entry> PrefixIndex::Dump() const {
  std::vector<Entry> out;
  for (uint32_t s = 0; s < header_->geometry.stripes; ++s) {
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
              Entry{Ld(n.key), Ld(n.ns),
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
  return out;
}

}  // namespace kvidx::index
