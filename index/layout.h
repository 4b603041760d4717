// The shared-memory layout of the kvidx index segment: plain structs at fixed offsets.
//
// Implementation notes
// --------------------
// One segment holds everything, preallocated at creation; nothing is allocated later.
//
//   +--------------------+ 0
//   | SegmentHeader      |  magic, layout version, geometry, offsets, admin lock
//   +--------------------+ namespaces_offset
//   | NamespaceSlot[N]   |  model + LoRA name -> root key, block size
//   +--------------------+ publishers_offset
//   | PublisherSlot[P]   |  identity | index state (journal, counters) | ingest state
//   +--------------------+ stripes_offset
//   | Stripe 0           |  StripeHeader | u32 buckets[B] | BlockNode[b] | HolderChunk[c]
//   | Stripe 1 ...       |  (stripe_stride bytes each; a block key picks its stripe)
//   +--------------------+ engine_stripes_offset
//   | EngineStripe 0 ... |  EngineStripeHeader | u32 buckets[EB] | EngineNode[e]
//   +--------------------+ total_size
//
// A block lives in stripe (key >> 40) & (stripes - 1), in bucket key & (B - 1). A block node
// chains to the next node of its bucket. Its holders — one 32-bit slot per (publisher, tier):
// publisher, tier, reference count — sit in two slots inline in the node and then in a chain of
// HolderChunks of seven slots each, so a block held by 64 pods costs 10 cache lines to read,
// not 64. A slot is free when its reference count is 0. Blocks of a stripe are also on a doubly
// linked list in store order (least recently stored first) for eviction.
//
// Engine stripes map (engine hash, namespace, scope) -> block key. The mapping is a cache that
// is never wrong, only possibly stale: an engine hash names the same content every time, so an
// entry stays valid after its block is evicted and is swept only when its stripe fills up.
//
// Every index is a u32 into an array of the same stripe; kNil ends a chain. Nodes are linked
// with one store after they are filled and unlinked with one store before they are freed, and a
// holder slot is set or cleared with one 32-bit store, so a
// writer killed at any instruction leaves every chain readable; a repair (on EOWNERDEAD) only
// rebuilds the free lists and the store-order list from what is reachable.
//
// Concurrency: a writer holds the stripe's robust mutex and makes the stripe version odd while
// it writes. Readers take no lock: they read the version, read the data with relaxed atomic
// loads (bounded walks: a torn read can never loop or index out of bounds), and retry if the
// version changed. All shared fields are read and written with __atomic builtins so that the
// races that optimistic reading implies are well defined (and visible to ThreadSanitizer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "index/robust_mutex.h"

namespace kvidx::index {

inline constexpr uint64_t kSegmentMagic = 0x6b76696478494458ULL;  // "kvidxIDX"
inline constexpr uint32_t kLayoutVersion = 7;

// Latency histogram bucket bounds (microseconds) shared by the apply and lookup histograms.
inline constexpr int kLatencyBounds = 15;
inline constexpr uint64_t kLatencyBoundsUs[kLatencyBounds] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 1000000, 10000000};
// The bucket of a duration: the first bound it does not exceed, or kLatencyBounds (+Inf).
inline constexpr int LatencyBucket(int64_t ns) {
  for (int i = 0; i < kLatencyBounds; ++i) {
    if (ns <= static_cast<int64_t>(kLatencyBoundsUs[i]) * 1000) return i;
  }
  return kLatencyBounds;
}
inline constexpr uint32_t kNil = 0xFFFFFFFFu;

enum Tier : uint8_t { kGpu = 0, kCpu = 1, kDisk = 2 };
inline constexpr int kNumTiers = 3;

// What the segment is sized for. Chosen by configuration; stored in the header; an attacher
// that expects another geometry gets an error.
struct Geometry {
  uint64_t blocks = 0;         // distinct blocks
  uint64_t pairs = 0;          // (publisher, tier, block) residencies
  uint64_t holder_chunks = 0;  // 7-holder overflow chunks (0: pairs / 5)
  uint64_t engine_hashes = 0;  // engine hash -> block key mappings (0: max(pairs, 1.25 x blocks))
  uint32_t publishers = 0;
  uint32_t namespaces = 0;
  uint32_t stripes = 0;  // power of two
  uint32_t reserved = 0;

  bool operator==(const Geometry&) const = default;
};

// Per-stripe sizes derived from a Geometry (deterministically, so attachers agree).
struct StripeGeometry {
  uint32_t blocks_per_stripe;
  uint32_t pairs_per_stripe;  // nominal; what fits depends on how holders spread over blocks
  uint32_t chunks_per_stripe;
  uint32_t buckets_per_stripe;  // power of two
  uint32_t engine_stripes;      // power of two
  uint32_t engine_nodes_per_stripe;
  uint32_t engine_buckets_per_stripe;  // power of two
};

// Slots for the counts by wire::DecodeReason (the index does not know the reasons; ingest and
// query static_assert that they fit).
inline constexpr int kDecodeReasonSlots = 8;

// Segment-wide ingest counters: written by every ingest worker (relaxed atomic adds), read by
// anyone.
struct IngestCounters {
  uint64_t decode_errors[kDecodeReasonSlots];  // by wire::DecodeReason
  uint64_t garbage_frames;                     // messages that are not [topic, seq8, payload]
  uint64_t unknown_events;                     // events with a tag no decoder knows (skipped)
  uint64_t batches_applied;
  uint64_t events_applied;
  // Time to decode and apply one batch, as a histogram (kLatencyBoundsUs; the last bucket is
  // everything slower), and its sum.
  uint64_t apply_latency_buckets[16];
  uint64_t apply_latency_sum_ns;
};

struct alignas(64) SegmentHeader {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t header_size;
  uint64_t total_size;
  Geometry geometry;
  StripeGeometry stripe_geometry;
  uint64_t namespaces_offset;
  uint64_t publishers_offset;
  uint64_t stripes_offset;
  uint64_t stripe_stride;
  uint64_t engine_stripes_offset;
  uint64_t engine_stripe_stride;
  uint64_t created_wall_ns;
  int32_t creator_pid;
  uint32_t ready;  // set (release) last by the creator; attachers wait for it
  // Serialises namespace and publisher registration (rare). Never held with a stripe lock.
  RobustMutex admin_mu;
  // Bumped (release) by every registration change, so readers can cache slot lookups.
  uint64_t registry_version;
  uint64_t lookups;  // counted by readers that are allowed to write (not the read-only query)
  IngestCounters ingest;
};

enum NamespaceFlags : uint32_t {
  // Blocks are keyed by EngineHashKey(root, engine hash): for dialects without tokens (KVBM).
  kKeyByEngineHash = 1u << 0,
};

struct NamespaceSlot {
  uint32_t in_use;
  uint32_t block_size;
  uint64_t root;
  uint32_t flags;
  int32_t lora_id;  // -1 when none
  char model[120];
  char lora_name[64];
};

enum class PublisherState : uint32_t { kFree = 0, kActive = 1 };

enum PublisherFlags : uint32_t {
  // Engine hashes of this publisher are not content hashes shared with other publishers
  // (e.g. old SGLang's unchained Python hash()): its mappings are kept apart from everyone's.
  kPrivateEngineHashes = 1u << 0,
  // kvidx binds the SUB socket and the engine connects to it.
  kBindSubscriber = 1u << 1,
};

enum class JournalOp : uint32_t { kNone = 0, kStore = 1, kRemove = 2, kClear = 3 };

// A per-publisher redo record for the one block operation in flight. Written (under the block's
// stripe lock) before the operation changes the stripe, cleared after the publisher's applied
// counter is bumped. A publisher whose writer died with a record set is finished by
// PrefixIndex::RecoverPublisher, which sets the residency to `target_refs` and the counter to
// `op_index`. Redo is idempotent.
struct ApplyJournal {
  uint32_t op;  // JournalOp
  uint8_t tier;
  uint8_t target_refs;
  uint16_t ns;
  uint64_t op_index;
  uint64_t block_key;
  uint64_t engine_hash;
};

// A publisher's slot has one part per writer, so that nobody writes another part's fields:
// - `id`: written by the registry under the admin lock (registration, unregistration).
// - `index`: written by the index (index/internal/) on behalf of the publisher's one writer:
//   the applied-operation count and journal that make applying exactly-once, the batch cursor,
//   and what happened to its stores and removes.
// - `ingest`: written by the owning ingest worker only: the stream (sequence, continuity,
//   connection), decoding and refused events.
// Everyone may read every part (relaxed loads; values are counters and states, each consistent
// on its own).
struct PublisherIdentity {
  uint32_t state;  // PublisherState; release-stored last when a slot is (un)registered
  uint32_t flags;  // PublisherFlags
  uint32_t ns;
  uint32_t dp_rank;
  uint32_t worker;  // owning ingest worker
  uint32_t reserved;
  char pod[64];
  char endpoint[128];
  char replay_endpoint[128];
  char topic[64];
  char dialect[16];
  uint64_t quota_pairs;  // 0: no per-publisher quota
};

// The batch being applied: if a worker dies mid-batch, its successor replays batch_seq and skips
// the first applied_ops - batch_first_op operations (PrefixIndex::BeginBatch).
struct BatchCursor {
  uint64_t batch_seq;
  uint64_t batch_first_op;
  uint32_t batch_pending;
  uint32_t reserved;
};

struct PublisherIndexState {
  uint64_t applied_ops;  // block operations applied, ever (the journal's op_index space)
  uint64_t pairs;        // live residencies (approximate after a crash until recovery)
  ApplyJournal journal;
  BatchCursor cursor;
  // Counters (monotonic).
  uint64_t stored_blocks;
  uint64_t removed_blocks;
  uint64_t duplicate_stores;
  uint64_t unknown_removes;
  uint64_t orphan_blocks;      // parent unknown: cannot be keyed
  uint64_t unresolved_blocks;  // token-less store with an unknown engine hash
  uint64_t clears;
  uint64_t evicted_pairs;  // residencies of this publisher dropped by eviction
  uint64_t quota_evictions;
  uint64_t rejected_stores;    // could not be stored (capacity or quota)
  uint64_t engine_table_full;  // stores refused: no room to map their engine hash
  // Stores whose engine hash was mapped to another live block (unchained page hashes, or
  // another publisher's): the shared mapping is kept, this publisher's goes to its own scope.
  uint64_t engine_hash_conflicts;
};

struct PublisherIngestState {
  uint64_t epoch;  // bumped on every resync (and carried over when the slot is reused)
  // Sequence bookkeeping: last fully applied batch sequence (valid if has_seq).
  uint64_t last_seq;
  uint32_t has_seq;
  uint32_t gap_open;  // a gap is being replayed
  uint32_t connected;
  uint32_t has_instance;
  int64_t connected_since_wall_ns;
  uint64_t connects;
  uint64_t disconnects;
  uint64_t connect_retries;
  uint64_t replay_batches;
  uint64_t instance_hi;  // KVBM instance id of the current stream (has_instance)
  uint64_t instance_lo;
  int64_t last_event_wall_ns;
  uint64_t gaps;
  uint64_t replays;
  uint64_t resyncs;
  uint64_t batches;
  uint64_t events;
  uint64_t decode_errors;
  // Stream continuity (ingest/stream_machine.h): the payload digests of the last applied
  // batches, slot seq % 16; entry i is valid if bit i of digest_valid is set. A restarted worker
  // checks the engine against them before it applies anything.
  uint64_t digest_seq[16];
  uint64_t digest[16];
  uint32_t digest_valid;
  uint32_t stream_state;       // wire::StreamState
  uint32_t reachable;          // the engine answered within unreachable_after_ms
  uint32_t resync_pending;     // a resync began: a successor finishes it before anything else
  int64_t last_heard_wall_ns;  // last message of any kind from the engine
  uint64_t probes;             // idle probes (not counted as replays)
  uint64_t restarts;           // engine restarts detected
  uint64_t unverifiable_gaps;  // continuity that could not be checked: residencies dropped
  uint64_t stale_drops;        // residencies dropped after drop_after_ms unreachable
  // Stored blocks refused because their event's block size is not the namespace's (they could
  // never match a lookup), and the last such size seen.
  uint64_t block_size_mismatches;
  uint32_t mismatched_block_size;
  uint32_t reserved;
  // Events refused because they named another model than the publisher's, or a new adapter
  // past max_adapters_per_model.
  uint64_t foreign_model_events;
  uint64_t adapter_limit_events;
  // Memory budgets of the owning worker's per-publisher structures (config: queue_bytes,
  // replay_buffer_bytes, sequence_table_bytes): what each holds now, the sum of the budgets,
  // and the items refused because a budget was full (a live batch not buffered during a
  // replay, a sequence block not recorded).
  uint64_t buffered_bytes;
  uint64_t sequence_bytes;
  uint64_t budget_bytes;
  uint64_t budget_drops;
  // The engine-hash cross-check (ingest/engine_hash.h): blocks whose published hash was
  // recomputed, those that differed, and the last hash that differed.
  uint64_t hash_checks;
  uint64_t hash_mismatches;
  uint64_t last_hash_mismatch;
  // KVBM instances of the endpoint (ingest/kvbm_instances.h), kept on the configured
  // publisher: how many are live, and batches refused because every slot was taken.
  uint32_t kvbm_instances;
  uint32_t reserved2;
  uint64_t kvbm_refused;
};

struct alignas(64) PublisherSlot {
  PublisherIdentity id;
  PublisherIndexState index;
  PublisherIngestState ingest;
};

// A holder slot: bits 0-15 publisher, 16-23 reference count (duplicate stores of the same
// engine block, saturating at 255; 0 = free slot), 24-25 tier.
using HolderSlot = uint32_t;
inline constexpr HolderSlot PackHolder(uint16_t publisher, uint8_t tier, uint8_t refs) {
  return uint32_t{publisher} | (uint32_t{refs} << 16) | (uint32_t{tier & 3u} << 24);
}
inline constexpr uint16_t SlotPublisher(HolderSlot s) { return s & 0xFFFF; }
inline constexpr uint8_t SlotRefs(HolderSlot s) { return (s >> 16) & 0xFF; }
inline constexpr uint8_t SlotTier(HolderSlot s) { return (s >> 24) & 3; }

inline constexpr int kInlineHolders = 2;
inline constexpr int kChunkHolders = 7;

// Identifies a block's set of (publisher, tier) holders: the XOR of HolderMix over them.
// Lookups skip re-reading holders when a block's set equals its predecessor's.
inline constexpr uint64_t HolderMix(uint16_t publisher, uint8_t tier) {
  uint64_t x = (uint64_t{publisher} << 2 | tier) + 0x9e3779b97f4a7c15ULL;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 32);
}

struct BlockNode {
  uint64_t key;
  uint64_t holder_set;  // XOR of HolderMix over the holders (0: none)
  uint32_t next;        // bucket chain
  uint32_t chunk_head;  // HolderChunk chain
  uint32_t lru_prev;    // toward older
  uint32_t lru_next;    // toward newer
  uint32_t tick;        // stripe store counter at last store (rebuilds the LRU on repair)
  uint16_t ns;
  uint16_t in_use;
  HolderSlot inline_holders[kInlineHolders];
};
static_assert(sizeof(BlockNode) == 48);

struct HolderChunk {
  uint32_t next;
  HolderSlot slots[kChunkHolders];
};
static_assert(sizeof(HolderChunk) == 32);

struct alignas(64) StripeHeader {
  RobustMutex mu;
  uint64_t version;  // seqlock: odd while a writer is inside
  int32_t owner_pid;
  uint32_t tick;
  uint32_t free_blocks;
  uint32_t free_chunks;
  uint32_t lru_oldest;
  uint32_t lru_newest;
  uint32_t live_blocks;
  uint32_t live_residencies;  // occupied holder slots: (publisher, tier, block) pairs
  uint64_t evicted_blocks;
  uint64_t repairs;
};

struct EngineNode {
  uint64_t engine_hash;
  uint64_t block_key;
  uint32_t next;
  uint16_t ns;
  uint16_t scope;  // 0: shared content hash; p + 1: private to publisher p
};
static_assert(sizeof(EngineNode) == 24);

struct alignas(64) EngineStripeHeader {
  RobustMutex mu;
  uint64_t version;
  int32_t owner_pid;
  uint32_t free_nodes;
  uint32_t live_nodes;
  uint32_t sweep_cursor;  // next bucket a bounded sweep looks at
  uint64_t swept;         // stale entries dropped
  uint64_t full;          // inserts refused: stripe full of live entries
  uint64_t repairs;
};

static_assert(std::is_standard_layout_v<SegmentHeader>);
static_assert(std::is_standard_layout_v<PublisherSlot>);
static_assert(std::is_standard_layout_v<StripeHeader>);
static_assert(std::is_standard_layout_v<EngineStripeHeader>);

// ThreadSanitizer cannot see atomic_thread_fence, on which the seqlock's ordering rests. Built
// with it, shared fields are loaded with acquire and stored with release instead and the seqlock
// uses no fence (SeqlockFence): a stronger ordering that gives the same guarantee in a form TSan
// checks (a reader whose data load sees a writer's store happens after that writer's odd
// version, so its re-check fails).
#if defined(__SANITIZE_THREAD__)
#define KVIDX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVIDX_TSAN 1
#endif
#endif
#ifdef KVIDX_TSAN
inline constexpr int kSharedLoadOrder = __ATOMIC_ACQUIRE;
inline constexpr int kSharedStoreOrder = __ATOMIC_RELEASE;
#else
inline constexpr int kSharedLoadOrder = __ATOMIC_RELAXED;
inline constexpr int kSharedStoreOrder = __ATOMIC_RELAXED;
#endif

// Atomic access to shared fields (relaxed in production). Ordering comes from the stripe
// version (seqlock) and the mutex; these only make the concurrent accesses well defined.
template <typename T>
inline T Ld(const T& field) {
  return __atomic_load_n(&field, kSharedLoadOrder);
}
template <typename T>
inline void St(T& field, T value) {
  __atomic_store_n(&field, value, kSharedStoreOrder);
}
template <typename T>
inline T AddRelaxed(T& field, T delta) {
  return __atomic_add_fetch(&field, delta, __ATOMIC_RELAXED);
}

}  // namespace kvidx::index
