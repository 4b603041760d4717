// PrefixIndex::LookupDeepest: the sparse lookup of KVBM namespaces (wire/lineage_hash.h).
//
// Implementation notes
// --------------------
// KVBM publishes blocks at a few positions of a sequence only, so holding the block at depth d
// says the holder caches the prompt's first d blocks whether or not it holds the shallower keys
// of the query. Every key's holders are read (no early stop: a holder may appear at any key),
// and each publisher keeps the deepest depth it holds, in any tier and per tier. Scratch is per
// thread, indexed by publisher id; the result's vector is reused.
#include <algorithm>

#include "index/prefix_index.h"

namespace kvidx::index {

void PrefixIndex::LookupDeepest(std::span<const BlockKey> keys, std::span<const uint32_t> depths,
                                const LookupOptions& options, LookupResult& out) const {
  out.matches.clear();
  out.blocks_walked = 0;
  out.degraded = false;
  const uint32_t npub = geometry().publishers;
  // Per-thread scratch by publisher, grown once and left clean: only the entries a call sets
  // are reset at its end, so a lookup costs its keys and holders, not the publisher table.
  thread_local std::vector<uint32_t> slot_of;  // publisher -> index in out.matches
  thread_local std::vector<uint8_t> allowed;   // publisher -> candidate
  thread_local std::vector<Holder> holders;
  if (slot_of.size() < npub) slot_of.resize(npub, kNil);
  if (allowed.size() < npub) allowed.resize(npub, 0);
  const bool all = options.candidates.empty();
  for (PublisherId c : options.candidates) {
    if (c < npub) allowed[c] = 1;
  }
  const size_t n = std::min(keys.size(), depths.size());
  for (size_t i = 0; i < n; ++i) blocks_.PrefetchBucket(keys[i]);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t depth = depths[i];
    if (options.max_blocks != 0 && depth > options.max_blocks) continue;
    bool degraded = false;
    blocks_.ReadHolders(keys[i], holders, degraded);
    out.degraded |= degraded;
    ++out.blocks_walked;
    for (const Holder& h : holders) {
      if (h.publisher >= npub || (!all && !allowed[h.publisher]) || h.tier >= kNumTiers) continue;
      if (slot_of[h.publisher] == kNil) {
        slot_of[h.publisher] = static_cast<uint32_t>(out.matches.size());
        out.matches.push_back(PublisherMatch{h.publisher, 0, {0, 0, 0}});
      }
      PublisherMatch& m = out.matches[slot_of[h.publisher]];
      m.blocks = std::max(m.blocks, depth);
      m.tier_blocks[h.tier] = std::max(m.tier_blocks[h.tier], depth);
    }
  }
  for (const PublisherMatch& m : out.matches) slot_of[m.publisher] = kNil;
  for (PublisherId c : options.candidates) {
    if (c < npub) allowed[c] = 0;
  }
  std::sort(out.matches.begin(), out.matches.end(),
            [](const PublisherMatch& a, const PublisherMatch& b) {
              return a.blocks != b.blocks ? a.blocks > b.blocks : a.publisher < b.publisher;
            });
}

}  // namespace kvidx::index
