// The lock-striped prefix index in shared memory: store, remove, clear, lookup, recover.
//
// A PrefixIndex is a view over an attached Segment (it owns nothing in the segment). Writers
// (ingest workers) attach read-write; the query process attaches read-only and may call only
// the const members. Layout and concurrency design: index/layout.h.
//
// Contracts shared by every member:
// - Process- and thread-safety: any number of readers and writers, in any processes, may use
//   one segment at once. The rule callers must keep: each publisher has one writer at a time
//   (its owning ingest worker), so one publisher's operations are applied in order. Different
//   publishers' writers may touch the same blocks concurrently.
// - Readers (const members) take no lock and never block on a writer for long: a stripe whose
//   writer died mid-update is read best-effort and the result is marked `degraded`.
// - Writers that find a stripe whose previous holder died repair it before going on.
// - Errors: INVALID_ARGUMENT for bad arguments (unknown ids, malformed spans), NOT_FOUND for an
//   unknown publisher/namespace or an engine hash the index cannot resolve, RESOURCE_EXHAUSTED
//   when a table or quota is full and nothing can be evicted, FAILED_PRECONDITION for a write
//   through a read-only attachment. Every refused operation is also counted.
#ifndef KVIDX_INDEX_PREFIX_INDEX_H
#define KVIDX_INDEX_PREFIX_INDEX_H

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "index/block_key.h"
#include "index/layout.h"
#include "index/segment.h"

namespace kvidx::index {

using PublisherId = uint16_t;
using NamespaceId = uint16_t;

struct NamespaceSpec {
  std::string model;
  std::string lora_name;  // "" for the base model
  int32_t lora_id = -1;   // numeric id some engines send instead of a name
  uint32_t block_size = 16;
  bool key_by_engine_hash = false;  // for token-less dialects (KVBM)
};

struct PublisherSpec {
  std::string pod;
  uint32_t dp_rank = 0;
  NamespaceId ns = 0;
  uint32_t worker = 0;
  uint64_t quota_pairs = 0;  // 0: none
  bool private_engine_hashes = false;
  std::string endpoint;
  std::string replay_endpoint;
  std::string topic;
  std::string dialect;
};

// One BlockStored event's worth of blocks for one publisher.
struct StoreRequest {
  Tier tier = kGpu;
  std::optional<uint64_t> parent_engine_hash;  // nullopt: the first block starts the sequence
  std::span<const uint64_t> engine_hashes;     // one per block
  std::span<const uint32_t> tokens;            // block_size per block; empty: token-less
  uint32_t block_size = 0;                     // 0: the namespace's block size
  // Optional per-block extra-key bytes (see docs/block-keys.md); empty or one entry per block.
  std::span<const std::span<const uint8_t>> extra;
  // The namespace to store in (a LoRA adapter's); default: the publisher's.
  std::optional<NamespaceId> ns;
};

struct StoreResult {
  uint32_t stored = 0;      // residencies added or re-referenced
  uint32_t duplicates = 0;  // of which the publisher already held the block in that tier
  uint32_t rejected = 0;    // capacity or quota: could not be stored
  uint32_t unresolved = 0;  // token-less and the engine hash is unknown
  bool orphan = false;      // parent unknown: nothing of the event could be keyed
};

struct Holder {
  PublisherId publisher;
  Tier tier;
  uint8_t refs;
};

struct LookupOptions {
  std::span<const PublisherId> candidates;  // empty: every publisher
  uint32_t max_blocks = 0;                  // 0: all of `keys`
};

struct PublisherMatch {
  PublisherId publisher;
  uint32_t blocks;                  // leading blocks held, any tier
  uint32_t tier_blocks[kNumTiers];  // leading blocks held in each tier
};

struct LookupResult {
  std::vector<PublisherMatch> matches;  // most blocks first
  uint32_t blocks_walked = 0;
  bool degraded = false;  // some stripe could only be read best-effort (dead writer)
};

struct IndexStats {
  uint64_t segment_bytes = 0;
  uint64_t blocks = 0;
  uint64_t block_capacity = 0;
  uint64_t pairs = 0;
  uint64_t pair_capacity = 0;
  uint64_t engine_entries = 0;
  uint64_t engine_capacity = 0;
  uint64_t evicted_blocks = 0;
  uint64_t stripe_repairs = 0;
  uint64_t engine_swept = 0;
  uint64_t engine_full = 0;
  uint32_t publishers = 0;
  uint32_t namespaces = 0;
  // Segment bytes divided by live pairs (what the memory goal measures) and by capacity.
  double bytes_per_live_pair = 0;
  double bytes_per_pair_capacity = 0;
};

// Test seam: when set, called inside every stripe write (block or engine stripe) with the
// stripe's lock held and its version odd: once right after locking (`finishing` false) and once
// after the writes, before the version turns even (`finishing` true). Crash tests use it to
// stop a writer inside an update by construction. Null in production.
using StripeWriteHook = void (*)(bool finishing);
extern StripeWriteHook g_stripe_write_hook;

class PrefixIndex {
 public:
  explicit PrefixIndex(const Segment* segment);

  const Geometry& geometry() const { return header_->geometry; }
  const SegmentHeader* header() const { return header_; }
  // The header for counters; nullptr through a read-only attachment.
  SegmentHeader* mutable_header() { return read_only_ ? nullptr : header_; }
  bool read_only() const { return read_only_; }

  // --- Registration (admin lock; rare) ---------------------------------------------------
  // Idempotent: the same model + LoRA name yields the same id (block size and flags updated).
  absl::StatusOr<NamespaceId> RegisterNamespace(const NamespaceSpec& spec);
  std::optional<NamespaceId> FindNamespace(std::string_view model,
                                           std::string_view lora_name) const;
  // Idempotent by (pod, dp_rank): re-registering updates the configuration, keeps state.
  absl::StatusOr<PublisherId> RegisterPublisher(const PublisherSpec& spec);
  std::optional<PublisherId> FindPublisher(std::string_view pod, uint32_t dp_rank) const;
  // Drops every residency of the publisher, then frees its slot.
  absl::Status UnregisterPublisher(PublisherId p);

  const NamespaceSlot* namespace_slot(NamespaceId ns) const;  // nullptr if not in use
  const PublisherSlot* publisher_slot(PublisherId p) const;   // nullptr if not in use
  // Mutable slot for the owning writer's sequence bookkeeping; nullptr if not in use or RO.
  PublisherSlot* mutable_publisher_slot(PublisherId p);
  std::vector<PublisherId> ActivePublishers() const;
  std::vector<NamespaceId> ActiveNamespaces() const;

  // --- Writes (read-write attachment; one writer per publisher) --------------------------
  // Keys the event's blocks (docs/block-keys.md) and stores each for `p`. Each block is one
  // applied operation (see applied_ops in PublisherSlot).
  absl::StatusOr<StoreResult> Store(PublisherId p, const StoreRequest& req);
  // Stores one already-keyed block. One applied operation.
  absl::Status StoreBlock(PublisherId p, Tier tier, uint64_t engine_hash, BlockKey key);
  // Drops one reference of `p` to the block named by `engine_hash` in `tier`. NOT_FOUND (and
  // counted) if the engine hash or the residency is unknown. One applied operation.
  absl::Status Remove(PublisherId p, Tier tier, uint64_t engine_hash,
                      std::optional<NamespaceId> ns = std::nullopt);
  // Counts an operation that could not be applied (e.g. an orphan of the sequence-id form) as
  // applied, so the publisher's operation count stays aligned with its stream.
  absl::Status SkipOp(PublisherId p, uint64_t PublisherSlot::*counter);
  // Drops every residency of `p` (AllBlocksCleared, resync). One applied operation.
  absl::Status ClearPublisher(PublisherId p);
  // Drops every block of namespace `ns`; returns how many.
  // `progress` (may be empty) is called every kProgressStripes stripes: a long clear can keep
  // a watchdog fed.
  static constexpr uint32_t kProgressStripes = 8;
  absl::StatusOr<uint64_t> ClearNamespace(NamespaceId ns,
                                          const std::function<void()>& progress = {});

  // --- Reads (lock-free) -------------------------------------------------------------------
  // For every publisher holding keys[0] (restricted to options.candidates), the number of
  // leading keys it holds, in any tier and per tier.
  LookupResult Lookup(std::span<const BlockKey> keys, const LookupOptions& options = {}) const;
  // Block keys of every full block of `tokens` in namespace `ns`.
  absl::StatusOr<std::vector<BlockKey>> KeysForTokens(NamespaceId ns,
                                                      std::span<const uint32_t> tokens) const;
  // The block key an engine hash names for publisher `p` (or any publisher sharing content
  // hashes when p is kAnyPublisher), if known.
  static constexpr PublisherId kAnyPublisher = 0xFFFF;
  std::optional<BlockKey> ResolveEngineHash(NamespaceId ns, PublisherId p,
                                            uint64_t engine_hash) const;
  // Who holds `key` (empty if nobody).
  std::vector<Holder> Holders(BlockKey key) const;
  IndexStats Stats() const;

  // --- Recovery ------------------------------------------------------------------------------
  // Finishes the operation a dead writer of `p` left in its journal, finishes an interrupted
  // clear, and recounts the publisher's live pairs. Call when taking over a publisher.
  absl::Status RecoverPublisher(PublisherId p);
  // Locks every stripe whose holder died and repairs it. Returns how many were repaired.
  uint32_t RepairAbandonedStripes();
  // Stripes (block and engine) whose seqlock version is odd: held by a writer now, or left
  // mid-update by one that died.
  uint32_t StripesMidUpdate() const;

  // Every (key, holder) in the index, for tests and `kvidxctl dump`. Not a snapshot: run it
  // when writers are quiet.
  struct Entry {
    BlockKey key;
    NamespaceId ns;
    Holder holder;
  };
  std::vector<Entry> Dump() const;

 private:
  struct StripeView;
  struct EngineView;
  class StripeWriter;
  class EngineWriter;

  StripeView stripe(uint32_t s) const;
  StripeView stripe_for(BlockKey key) const;
  EngineView engine_stripe(uint32_t s) const;
  EngineView engine_stripe_for(uint64_t mixed) const;
  static uint64_t EngineMix(uint64_t engine_hash, NamespaceId ns, uint16_t scope);
  uint16_t ScopeFor(PublisherId p) const;

  NamespaceSlot* ns_slot(NamespaceId ns) const;
  PublisherSlot* pub_slot(PublisherId p) const;
  absl::StatusOr<PublisherSlot*> WritablePublisher(PublisherId p);

  // Reads the holders of `key`; returns false if absent. `degraded` is set on a best-effort
  // read of a stripe whose writer died.
  // With `same_as` non-zero, returns kSame without reading holders when the block's holder set
  // fingerprint equals it; `holder_set` receives the fingerprint.
  enum class ReadResult { kAbsent, kFound, kSame };
  // The engine-hash entry's block key; `validated` (if given) tells whether the read was
  // validated against the stripe version (false: a best-effort read of a stalled stripe).
  std::optional<BlockKey> ReadEngineEntry(uint64_t engine_hash, NamespaceId ns, uint16_t scope,
                                          bool* validated) const;
  ReadResult ReadHolders(BlockKey key, std::vector<Holder>& out, bool& degraded,
                         uint64_t* holder_set = nullptr, uint64_t same_as = 0) const;
  bool BlockExists(BlockKey key) const;

  absl::Status ApplyStore(PublisherId p, PublisherSlot& ps, Tier tier, uint64_t engine_hash,
                          BlockKey key, NamespaceId ns, std::optional<uint8_t> redo_refs);
  // Takes back one reference a store just added (its engine hash could not be mapped).
  void UndoStore(PublisherId p, PublisherSlot& ps, Tier tier, BlockKey key);
  absl::Status ApplyRemove(PublisherId p, PublisherSlot& ps, Tier tier, uint64_t engine_hash,
                           BlockKey key, NamespaceId ns, std::optional<uint8_t> redo_refs);
  void ClearPublisherStripes(PublisherId p);
  // Maps (engine_hash, ns, scope) to `key`. ALREADY_EXISTS if it maps to another block that is
  // live (unless `overwrite`); RESOURCE_EXHAUSTED if the stripe has no room.
  absl::Status EnsureEngineEntry(uint64_t engine_hash, NamespaceId ns, uint16_t scope, BlockKey key,
                                 bool overwrite = false);
  void Ack(PublisherSlot& ps, uint64_t op_index);
  void NoteEvicted(PublisherId p) const;

  const Segment* segment_;
  char* base_;
  SegmentHeader* header_;
  bool read_only_;
  StripeGeometry sg_;
};

}  // namespace kvidx::index

#endif  // KVIDX_INDEX_PREFIX_INDEX_H
