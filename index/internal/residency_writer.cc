#include "index/internal/residency_writer.h"

#include <algorithm>

#include "index/internal/journal.h"
#include "shared/status.h"

namespace kvidx::index::internal {
namespace {

ApplyJournal Record(const BlockOp& op, uint8_t target, uint64_t op_index) {
  ApplyJournal j{};
  j.tier = static_cast<uint8_t>(op.tier);
  j.target_refs = target;
  j.ns = op.ns;
  j.op_index = op_index;
  j.block_key = op.key;
  j.engine_hash = op.engine_hash;
  return j;
}

}  // namespace

absl::Status ResidencyWriter::StoreInStripe(PublisherSlot& ps, const BlockOp& op, uint64_t op_index,
                                            std::optional<uint8_t> redo_refs, bool* duplicate) {
  const PublisherId p = op.publisher;
  BlockStripeWriter w(blocks_, registry_, blocks_.stripe_for(op.key));
  if (!w.ok()) return absl::InternalError("stripe lock unrecoverable");
  auto journal = [&](uint8_t target) {
    if (!redo_refs) WriteJournal(ps, JournalOp::kStore, Record(op, target, op_index));
  };
  const uint32_t b = w.Find(op.key);
  if (HolderSlot* slot = b == kNil ? nullptr : w.FindSlot(b, p, op.tier, nullptr)) {
    uint8_t refs = SlotRefs(Ld(*slot));
    uint8_t target = redo_refs ? *redo_refs : static_cast<uint8_t>(refs == 255 ? 255 : refs + 1);
    journal(target);
    w.SetRefs(b, slot, p, op.tier, target);
    *duplicate = !redo_refs;
    return absl::OkStatus();
  }
  KVIDX_RETURN_IF_ERROR(w.MakeRoom(p, ps, b));
  const uint8_t target = redo_refs ? *redo_refs : 1;
  journal(target);
  if (b != kNil) {
    w.AddHolder(b, p, op.tier, target);  // one store publishes the holder
  } else {
    w.InsertBlock(op.key, op.ns, p, op.tier, target);
  }
  AddRelaxed(ps.index.pairs, uint64_t{1});
  return absl::OkStatus();
}

absl::Status ResidencyWriter::MapEngineHash(PublisherSlot& ps, const BlockOp& op) {
  const PublisherId p = op.publisher;
  const uint16_t own = static_cast<uint16_t>(p + 1);
  // Most stores re-state a mapping that is already there; a validated lock-free read proves it
  // (no writer, hence no sweep, was inside the stripe during the read, and any sweep that
  // starts later sees the block stored before), and saves taking the engine stripe's lock.
  uint16_t scope = registry_.ScopeFor(p);
  if (scope == 0 && Ld(ps.index.engine_hash_conflicts) != 0 &&
      engine_.Read(op.engine_hash, op.ns, own, nullptr)) {
    scope = own;  // its own mapping for this hash takes the store
  }
  bool validated = false;
  if (engine_.Read(op.engine_hash, op.ns, scope, &validated) == op.key && validated) {
    return absl::OkStatus();
  }
  absl::Status es = engine_.Ensure(op.engine_hash, op.ns, scope, op.key);
  if (absl::IsAlreadyExists(es)) {
    // The hash names another live block: never change what an existing entry means (its
    // holders' removals and children resolve through it). This publisher's mapping goes to its
    // own scope; a conflict within its own scope (the same unchained page at two positions)
    // cannot be told apart by a removal, and the latest store wins.
    AddRelaxed(ps.index.engine_hash_conflicts, uint64_t{1});
    es = scope == 0 ? engine_.Ensure(op.engine_hash, op.ns, own, op.key)
                    : engine_.Ensure(op.engine_hash, op.ns, scope, op.key, /*overwrite=*/true);
  }
  return es;
}

absl::Status ResidencyWriter::Store(PublisherSlot& ps, const BlockOp& op,
                                    std::optional<uint8_t> redo_refs, bool* duplicate) {
  const uint64_t op_index = Ld(ps.index.applied_ops) + 1;
  bool dup = false;
  KVIDX_RETURN_IF_ERROR(StoreInStripe(ps, op, op_index, redo_refs, &dup));
  const NamespaceSlot* nss = registry_.ns_slot(op.ns);
  // After the block exists: a concurrent sweep keeps entries whose block exists.
  if ((Ld(nss->flags) & kKeyByEngineHash) == 0) {
    absl::Status es = MapEngineHash(ps, op);
    if (absl::IsResourceExhausted(es)) {
      // Without its mapping, the block's removal could never find it: the residency would
      // outlive the engine's copy. Take the store back and refuse it (counted). A redo (the
      // writer died after the store) is taken back the same way and acknowledged here.
      UndoStore(ps, op);
      AddRelaxed(ps.index.rejected_stores, uint64_t{1});
      AddRelaxed(ps.index.engine_table_full, uint64_t{1});
      if (!redo_refs) return es;  // the caller acknowledges the operation
      Ack(ps, op_index);
      return absl::OkStatus();
    }
  }
  AddRelaxed(ps.index.stored_blocks, uint64_t{1});
  if (dup) AddRelaxed(ps.index.duplicate_stores, uint64_t{1});
  if (duplicate != nullptr) *duplicate = dup;
  Ack(ps, op_index);
  return absl::OkStatus();
}

void ResidencyWriter::UndoStore(PublisherSlot& ps, const BlockOp& op) {
  BlockStripeWriter w(blocks_, registry_, blocks_.stripe_for(op.key));
  if (!w.ok()) return;
  uint32_t b = w.Find(op.key);
  uint32_t chunk = kNil;
  HolderSlot* slot = b == kNil ? nullptr : w.FindSlot(b, op.publisher, op.tier, &chunk);
  if (slot == nullptr) return;
  uint8_t refs = SlotRefs(Ld(*slot));
  if (refs > 1) {
    St(*slot, PackHolder(op.publisher, op.tier, static_cast<uint8_t>(refs - 1)));
    return;
  }
  w.RemoveHolder(b, slot, chunk);
  AddRelaxed(ps.index.pairs, uint64_t(-1));
}

absl::Status ResidencyWriter::Remove(PublisherSlot& ps, const BlockOp& op,
                                     std::optional<uint8_t> redo_refs) {
  const uint64_t op_index = Ld(ps.index.applied_ops) + 1;
  {
    BlockStripeWriter w(blocks_, registry_, blocks_.stripe_for(op.key));
    if (!w.ok()) return absl::InternalError("stripe lock unrecoverable");
    uint32_t b = w.Find(op.key);
    uint32_t chunk = kNil;
    HolderSlot* slot = b == kNil ? nullptr : w.FindSlot(b, op.publisher, op.tier, &chunk);
    if (slot == nullptr) {
      Ack(ps, op_index);
      if (redo_refs) return absl::OkStatus();  // already gone: the redo is complete
      AddRelaxed(ps.index.unknown_removes, uint64_t{1});
      return absl::NotFoundError("publisher does not hold that block in that tier");
    }
    uint8_t refs = SlotRefs(Ld(*slot));
    uint8_t target = redo_refs ? *redo_refs : static_cast<uint8_t>(refs - 1);
    // The record keeps the namespace: a redo that keeps references re-states the mapping in it.
    if (!redo_refs) WriteJournal(ps, JournalOp::kRemove, Record(op, target, op_index));
    if (target > 0) {
      St(*slot, PackHolder(op.publisher, op.tier, target));
    } else {
      w.RemoveHolder(b, slot, chunk);  // one store drops the holder
      AddRelaxed(ps.index.pairs, uint64_t(-1));
    }
  }
  AddRelaxed(ps.index.removed_blocks, uint64_t{1});
  Ack(ps, op_index);
  return absl::OkStatus();
}

void ResidencyWriter::DropPublisherEverywhere(PublisherId p, PublisherSlot& ps) {
  for (uint32_t s = 0; s < blocks_.count(); ++s) {
    BlockStripeWriter w(blocks_, registry_, blocks_.stripe(s));
    if (w.ok()) w.DropPublisher(p);
  }
  St(ps.index.pairs, uint64_t{0});
}

bool ResidencyWriter::RepairIfAbandoned(uint32_t s) {
  const StripeView v = blocks_.stripe(s);
  if ((Ld(v.h->version) & 1) == 0) return false;
  const uint64_t before = Ld(v.h->repairs);
  { BlockStripeWriter w(blocks_, registry_, v); }
  return Ld(v.h->repairs) != before;
}

void ResidencyWriter::ClearPublisher(PublisherId p, PublisherSlot& ps) {
  ApplyJournal j{};
  j.op_index = Ld(ps.index.applied_ops) + 1;
  WriteJournal(ps, JournalOp::kClear, j);
  DropPublisherEverywhere(p, ps);
  AddRelaxed(ps.index.clears, uint64_t{1});
  Ack(ps, j.op_index);
}

uint64_t ResidencyWriter::ClearNamespace(NamespaceId ns, uint32_t every,
                                         const std::function<void()>& progress) {
  uint64_t dropped = 0;
  for (uint32_t s = 0; s < blocks_.count(); ++s) {
    if (progress && s % every == every - 1) progress();
    BlockStripeWriter w(blocks_, registry_, blocks_.stripe(s));
    if (w.ok()) dropped += w.DropNamespace(ns);
  }
  return dropped;
}

absl::Status ResidencyWriter::Recover(PublisherId p, PublisherSlot& ps) {
  const ApplyJournal j = ReadJournal(ps);
  if (j.op != static_cast<uint32_t>(JournalOp::kNone) &&
      j.op_index == Ld(ps.index.applied_ops) + 1) {
    const BlockOp op{p, static_cast<Tier>(std::min<uint8_t>(j.tier, kDisk)), j.engine_hash,
                     j.block_key, j.ns};
    switch (static_cast<JournalOp>(j.op)) {
      case JournalOp::kStore:
        KVIDX_RETURN_IF_ERROR(Store(ps, op, j.target_refs));
        break;
      case JournalOp::kRemove:
        // Sets the residency to the journal's reference count (dropping it at 0) if the dead
        // writer did not get to it; the block and its mapping were there before the remove.
        (void)Remove(ps, op, j.target_refs);
        break;
      case JournalOp::kClear:
        DropPublisherEverywhere(p, ps);
        AddRelaxed(ps.index.clears, uint64_t{1});
        Ack(ps, j.op_index);
        break;
      default:
        break;
    }
  }
  St(ps.index.journal.op, static_cast<uint32_t>(JournalOp::kNone));
  // Recount the live pairs: a writer killed between a link and its counter left them off.
  uint64_t pairs = 0;
  for (uint32_t s = 0; s < blocks_.count(); ++s) {
    BlockStripeWriter w(blocks_, registry_, blocks_.stripe(s));  // also repairs an abandoned one
    if (w.ok()) pairs += w.CountPublisher(p);
  }
  St(ps.index.pairs, pairs);
  return absl::OkStatus();
}

std::optional<BlockKey> ResidencyWriter::Resolve(NamespaceId ns, PublisherId p,
                                                 uint64_t engine_hash) const {
  const NamespaceSlot* nss = registry_.active_namespace(ns);
  if (nss == nullptr) return std::nullopt;
  if (Ld(nss->flags) & kKeyByEngineHash) return EngineHashKey(Ld(nss->root), engine_hash);
  const uint16_t scope = registry_.ScopeFor(p);
  if (scope == 0 && p != kAnyPublisher) {
    // A publisher whose store conflicted with a shared mapping has its own for that hash.
    const PublisherSlot* ps = registry_.pub_slot(p);
    if (ps != nullptr && Ld(ps->index.engine_hash_conflicts) != 0) {
      if (auto own = engine_.Read(engine_hash, ns, static_cast<uint16_t>(p + 1), nullptr)) {
        return own;
      }
    }
  }
  return engine_.Read(engine_hash, ns, scope, nullptr);
}

}  // namespace kvidx::index::internal
