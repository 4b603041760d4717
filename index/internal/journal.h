// The per-publisher apply journal: the redo record of the one operation in flight, and the
// acknowledgement that ends it.
//
// Contract (the crash-safety argument is in index/layout.h, ApplyJournal)
// - Write() fills the record, then publishes its `op` word; compiler barriers keep the record
//   complete before `op` and `op` before the caller's first change to a stripe. Called by the
//   publisher's one writer, under the stripe lock of the block it is about to change (or
//   before a whole-publisher clear).
// - Ack() advances `applied_ops` to `op_index` (never backwards: a successor resumes from it),
//   then clears `op`. A record whose op_index is not applied_ops + 1 is already acknowledged.
// - Read() copies the record for recovery.
#pragma once

#include <cstdint>

#include "index/internal/seqlock.h"
#include "index/layout.h"

namespace kvidx::index::internal {

// Inline: every block store and remove goes through these.
inline void WriteJournal(PublisherSlot& ps, JournalOp op, const ApplyJournal& record) {
  ApplyJournal& j = ps.index.journal;
  St(j.tier, record.tier);
  St(j.target_refs, record.target_refs);
  St(j.ns, record.ns);
  St(j.op_index, record.op_index);
  St(j.block_key, record.block_key);
  St(j.engine_hash, record.engine_hash);
  CompilerBarrier();
  St(j.op, static_cast<uint32_t>(op));
  CompilerBarrier();
}

inline void Ack(PublisherSlot& ps, uint64_t op_index) {
  if (op_index > Ld(ps.index.applied_ops)) St(ps.index.applied_ops, op_index);
  CompilerBarrier();
  St(ps.index.journal.op, static_cast<uint32_t>(JournalOp::kNone));
}

ApplyJournal ReadJournal(const PublisherSlot& ps);
// Acknowledges the next operation without applying anything (it was refused or skipped).
inline void AckNext(PublisherSlot& ps) { Ack(ps, Ld(ps.index.applied_ops) + 1); }

}  // namespace kvidx::index::internal
