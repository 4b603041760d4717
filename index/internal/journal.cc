#include "index/internal/journal.h"

namespace kvidx::index::internal {

ApplyJournal ReadJournal(const PublisherSlot& ps) {
  ApplyJournal j{};
  j.op = Ld(ps.index.journal.op);
  j.tier = Ld(ps.index.journal.tier);
  j.target_refs = Ld(ps.index.journal.target_refs);
  j.ns = Ld(ps.index.journal.ns);
  j.op_index = Ld(ps.index.journal.op_index);
  j.block_key = Ld(ps.index.journal.block_key);
  j.engine_hash = Ld(ps.index.journal.engine_hash);
  return j;
}

}  // namespace kvidx::index::internal
