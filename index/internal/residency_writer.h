// Applying one publisher's block operations to the stripes and the engine-hash table, with
// the apply journal that makes each of them exactly-once across a writer's death.
//
// Contract
// - One writer per publisher (its owning ingest worker); `ps` is that publisher's slot.
// - Every operation is journaled before it changes a stripe and acknowledged (applied_ops)
//   after; with `redo_refs` set the call is the redo of a journaled operation (recovery): it
//   sets the residency to exactly that reference count and writes no journal.
// - Store() leaves an operation it refuses (RESOURCE_EXHAUSTED) unacknowledged, so the caller
//   decides how to count it; every other outcome is acknowledged here.
// - Locks: one block stripe at a time, then (after releasing it) one engine stripe; never the
//   admin lock.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "absl/status/status.h"

#include "index/internal/block_stripe.h"
#include "index/internal/engine_table.h"
#include "index/internal/registry.h"

namespace kvidx::index::internal {

struct BlockOp {
  PublisherId publisher;
  Tier tier;
  uint64_t engine_hash;
  BlockKey key;
  NamespaceId ns;
};

class ResidencyWriter {
 public:
  ResidencyWriter(const Registry& registry, const BlockStripes& blocks, EngineTable& engine)
      : registry_(registry), blocks_(blocks), engine_(engine) {}

  // Adds one reference of op.publisher to op.key in op.tier and maps op.engine_hash to it.
  // `duplicate` (if given) tells whether the publisher already held the block in that tier.
  absl::Status Store(PublisherSlot& ps, const BlockOp& op, std::optional<uint8_t> redo_refs,
                     bool* duplicate = nullptr);
  // Drops one reference (or sets it to redo_refs). NOT_FOUND (counted) if the publisher does
  // not hold the block in that tier.
  absl::Status Remove(PublisherSlot& ps, const BlockOp& op, std::optional<uint8_t> redo_refs);
  // Drops every residency of `p` (journaled as one operation).
  void ClearPublisher(PublisherId p, PublisherSlot& ps);
  // Drops every residency of `p` without a journal record (unregistration, recovery of a clear).
  void DropPublisherEverywhere(PublisherId p, PublisherSlot& ps);
  // Locks block stripe `s` if its version is odd (repairing it if its writer died); returns
  // whether it was repaired.
  bool RepairIfAbandoned(uint32_t s);
  // Drops every block of `ns`; `progress` (may be empty) is called every `every` stripes.
  uint64_t ClearNamespace(NamespaceId ns, uint32_t every, const std::function<void()>& progress);
  // Redoes the journaled operation of a dead writer, if any, and recounts the live pairs.
  absl::Status Recover(PublisherId p, PublisherSlot& ps);

  // The block key `engine_hash` names for `p` in `ns` (kAnyPublisher: any publisher sharing
  // content hashes), if known.
  std::optional<BlockKey> Resolve(NamespaceId ns, PublisherId p, uint64_t engine_hash) const;

 private:
  // The stripe half of a store; `target` receives the reference count written.
  absl::Status StoreInStripe(PublisherSlot& ps, const BlockOp& op, uint64_t op_index,
                             std::optional<uint8_t> redo_refs, bool* duplicate);
  // The mapping half: RESOURCE_EXHAUSTED when the engine table has no room.
  absl::Status MapEngineHash(PublisherSlot& ps, const BlockOp& op);
  // Takes back one reference a store just added.
  void UndoStore(PublisherSlot& ps, const BlockOp& op);

  const Registry& registry_;
  const BlockStripes& blocks_;
  EngineTable& engine_;
};

}  // namespace kvidx::index::internal
