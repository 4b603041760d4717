// The lock-striped prefix index in shared memory: store, remove, clear, lookup, recover.
//
// A PrefixIndex is a facade over an attached Segment (it owns nothing in the segment); the
// parts it delegates to are in index/internal/ (docs/architecture.md lists them). Writers
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
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "index/block_key.h"
#include "index/internal/block_stripe.h"
#include "index/internal/engine_table.h"
#include "index/internal/registry.h"
#include "index/internal/residency_writer.h"
#include "index/layout.h"
#include "index/segment.h"
#include "index/stripe_write_hook.h"
#include "index/types.h"

namespace kvidx::index {

// Why an operation of a publisher's stream was counted as applied without changing the index.
// Why operations were consumed without changing the index (each has its counter): refused
// (capacity, quota, another model), parent unknown, removal of an unknown block, or a memory
// budget of the worker full (layout.h: PublisherIngestState::budget_drops), or a reference
// the caller counts itself (the sequence-id form's further sequences holding a block: a
// store counted as a duplicate, a removal as removed).
enum class SkipReason { kRejected, kOrphan, kUnknownRemove, kBudget, kSharedStore, kSharedRemove };

class PrefixIndex {
 public:
  explicit PrefixIndex(const Segment* segment);
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  const Geometry& geometry() const { return header_->geometry; }
  const SegmentHeader* header() const { return header_; }
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
  // Counts `ops` operations that could not be applied (e.g. orphans of the sequence-id form) as
  // applied, so the publisher's operation count stays aligned with its stream, and counts them
  // under `reason`.
  absl::Status SkipOps(PublisherId p, SkipReason reason, uint64_t ops = 1);
  // Drops every residency of `p` (AllBlocksCleared, resync). One applied operation.
  absl::Status ClearPublisher(PublisherId p);
  // Drops every block of namespace `ns`; returns how many.
  // `progress` (may be empty) is called every kProgressStripes stripes: a long clear can keep
  // a watchdog fed.
  static constexpr uint32_t kProgressStripes = 8;
  absl::StatusOr<uint64_t> ClearNamespace(NamespaceId ns,
                                          const std::function<void()>& progress = {});

  // --- The owning ingest worker's parts (layout.h: PublisherSlot) ---------------------------
  // The ingest part of `p`'s slot, for its owning worker only; nullptr if the publisher is not
  // in use or the attachment is read-only.
  PublisherIngestState* ingest_state(PublisherId p);
  // The segment-wide ingest counters; nullptr through a read-only attachment.
  IngestCounters* ingest_counters() { return read_only_ ? nullptr : &header_->ingest; }
  // The batch cursor, for resuming inside a batch after a writer's death. BeginBatch(p, seq)
  // marks batch `seq` begun and returns how many of its operations were applied already: 0
  // unless a predecessor died while applying that same batch. CommitBatch marks it done (call
  // after the batch's sequence is recorded); ResetBatch forgets it (a resync).
  absl::StatusOr<uint64_t> BeginBatch(PublisherId p, uint64_t seq);
  absl::Status CommitBatch(PublisherId p);
  absl::Status ResetBatch(PublisherId p);

  // --- Reads (lock-free) -------------------------------------------------------------------
  // For every publisher holding keys[0] (restricted to options.candidates), the number of
  // leading keys it holds, in any tier and per tier.
  LookupResult Lookup(std::span<const BlockKey> keys, const LookupOptions& options = {}) const;
  // The same answer written into `out` (every field reset): with a result reused across calls,
  // a lookup allocates nothing once the thread's scratch and `out` have grown to the prompt.
  void LookupInto(std::span<const BlockKey> keys, const LookupOptions& options,
                  LookupResult& out) const;
  // The sparse lookup of a KVBM namespace: for every publisher holding any of `keys`
  // (restricted to options.candidates), the largest depths[i] among the keys it holds, in any
  // tier and per tier (max_blocks: keys deeper than it are not read). keys and depths pair up.
  void LookupDeepest(std::span<const BlockKey> keys, std::span<const uint32_t> depths,
                     const LookupOptions& options, LookupResult& out) const;
  // Block keys of every full block of `tokens` in namespace `ns`.
  absl::StatusOr<std::vector<BlockKey>> KeysForTokens(NamespaceId ns,
                                                      std::span<const uint32_t> tokens) const;
  // The block key an engine hash names for publisher `p` (or any publisher sharing content
  // hashes when p is kAnyPublisher), if known.
  static constexpr PublisherId kAnyPublisher = index::kAnyPublisher;
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
  using Entry = IndexEntry;
  std::vector<Entry> Dump() const;

 private:
  absl::StatusOr<PublisherSlot*> WritablePublisher(PublisherId p);
  // What keying a store request's blocks needs, fixed for the request.
  struct Keying {
    PublisherId publisher;
    NamespaceId ns;
    uint32_t block_size;
    bool by_engine_hash;
    BlockKey root;
  };
  static constexpr size_t kAheadKeys = 64;
  bool KeyAhead(const Keying& k, const StoreRequest& req, BlockKey parent, BlockKey* out) const;
  // Keys block i of a store request (nullopt: unresolved, counted and acknowledged).
  std::optional<BlockKey> KeyOf(const Keying& k, PublisherSlot& ps, const StoreRequest& req,
                                size_t i, BlockKey parent, StoreResult& result);

  char* base_;
  SegmentHeader* header_;
  bool read_only_;
  internal::Registry registry_;
  internal::BlockStripes blocks_;
  internal::EngineTable engine_;
  internal::ResidencyWriter writer_;
};

}  // namespace kvidx::index
