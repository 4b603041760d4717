// PrefixIndex::Lookup: the longest cached prefix of every publisher, in one walk over the keys.
//
// Implementation notes
// --------------------
// The walk reads each key's holders once (lock-free) and keeps, per candidate publisher, how
// many leading blocks it holds in any tier and in each tier. Candidates are the holders of the
// first block (restricted to the caller's candidates); a candidate that misses a block drops
// out, and the walk ends when none is left. Consecutive blocks with the same holder-set
// fingerprint (the common case: a prompt's blocks stored together by the same pods) are not
// re-read: every live candidate extends its run by one. Per-publisher scratch is per thread,
// indexed by publisher id and stamped instead of cleared.
#include <algorithm>

#include "index/prefix_index.h"

namespace kvidx::index {
namespace {

// How far ahead the walk prefetches bucket heads (and, at half the distance, block nodes):
// 16 measured best on the pinned bench (4: H=1 p50 2.6 us, 8: 2.3, 16: 2.1).
constexpr size_t kPrefetchAhead = 16;

struct Candidate {
  PublisherId pub;
  uint8_t tiers_alive;
  bool alive;
  uint32_t blocks;
  uint32_t tier_blocks[kNumTiers];
};

class PrefixWalk {
 public:
  PrefixWalk(uint32_t publishers, std::span<const PublisherId> candidates, size_t keys);
  std::vector<Holder>& holders() { return sc_.holders; }
  // The next block has the same holders as the last one read.
  void Same() { ++pending_; }
  // The next block's holders are the last block's with (p, tier) added or removed (its holder
  // set differs from the last one by exactly HolderMix(p, tier)). Returns whether any candidate
  // is left.
  bool Toggle(uint32_t code);
  // Identifies the (publisher, tier) whose HolderMix is `mix`.
  const internal::HolderMixTable& mixes() const { return sc_.mixes; }
  // The next block's holders were read into holders() (empty if !found). Returns whether any
  // candidate is left.
  bool Next(bool found, bool first);
  // Writes the matches into `out` (cleared first; its capacity is reused).
  void Finish(std::vector<PublisherMatch>& out);

 private:
  struct Scratch {
    std::vector<uint32_t> stamp;
    std::vector<uint8_t> tiers;
    std::vector<uint32_t> allowed;
    std::vector<Holder> holders;
    std::vector<Candidate> cands;
    std::vector<uint32_t> added;  // Start's de-duplication, stamped
    internal::HolderMixTable mixes;
    uint32_t clock = 0;
  };
  void Flush();
  void MarkTiers(uint32_t stamp);
  bool Start(uint32_t stamp);
  // Extends or ends every live candidate by the holders stamped `stamp`.
  bool Advance(uint32_t stamp);

  static Scratch& ThreadScratch();

  Scratch& sc_;
  const uint32_t npub_;
  const bool filter_;
  uint32_t allow_stamp_ = 0;
  uint32_t pending_ = 0;  // blocks whose holder set equals the last one fully read
  uint32_t current_ = 0;  // the stamp of the current block's holders (stamp, tiers)
  size_t alive_ = 0;
  std::vector<Candidate>& cands_;
};

PrefixWalk::Scratch& PrefixWalk::ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

PrefixWalk::PrefixWalk(uint32_t publishers, std::span<const PublisherId> candidates, size_t keys)
    : sc_(ThreadScratch()), npub_(publishers), filter_(!candidates.empty()), cands_(sc_.cands) {
  cands_.clear();
  if (sc_.stamp.size() < npub_) {
    sc_.stamp.assign(npub_, 0);
    sc_.tiers.assign(npub_, 0);
    sc_.allowed.assign(npub_, 0);
    sc_.added.assign(npub_, 0);
    sc_.mixes.Build(npub_);
    sc_.clock = 0;
  }
  if (sc_.clock > 0xFFFF0000u - keys) {
    std::fill(sc_.stamp.begin(), sc_.stamp.end(), 0);
    std::fill(sc_.allowed.begin(), sc_.allowed.end(), 0);
    std::fill(sc_.added.begin(), sc_.added.end(), 0);
    sc_.clock = 0;
  }
  allow_stamp_ = ++sc_.clock;
  for (PublisherId c : candidates) {
    if (c < npub_) sc_.allowed[c] = allow_stamp_;
  }
}

void PrefixWalk::Flush() {
  if (pending_ == 0) return;
  for (Candidate& c : cands_) {
    if (!c.alive) continue;
    c.blocks += pending_;
    for (int k = 0; k < kNumTiers; ++k) c.tier_blocks[k] += ((c.tiers_alive >> k) & 1u) * pending_;
  }
  pending_ = 0;
}

void PrefixWalk::MarkTiers(uint32_t stamp) {
  for (const Holder& h : sc_.holders) {
    if (h.publisher >= npub_ || h.tier > kDisk) continue;
    if (filter_ && sc_.allowed[h.publisher] != allow_stamp_) continue;
    if (sc_.stamp[h.publisher] != stamp) {
      sc_.stamp[h.publisher] = stamp;
      sc_.tiers[h.publisher] = 0;
    }
    sc_.tiers[h.publisher] |= static_cast<uint8_t>(1u << h.tier);
  }
}

bool PrefixWalk::Start(uint32_t stamp) {
  for (const Holder& h : sc_.holders) {
    if (h.publisher >= npub_ || sc_.stamp[h.publisher] != stamp) continue;
    if (sc_.added[h.publisher] == stamp) continue;  // another tier of a candidate
    sc_.added[h.publisher] = stamp;
    cands_.push_back(Candidate{h.publisher, 0, true, 0, {0, 0, 0}});
  }
  for (Candidate& c : cands_) {
    uint8_t t = sc_.tiers[c.pub];
    c.blocks = 1;
    c.tiers_alive = t;
    for (int k = 0; k < kNumTiers; ++k) c.tier_blocks[k] = (t >> k) & 1u;
  }
  alive_ = cands_.size();
  return alive_ != 0;
}

bool PrefixWalk::Next(bool found, bool first) {
  Flush();
  const uint32_t stamp = ++sc_.clock;
  current_ = stamp;
  if (found) MarkTiers(stamp);
  if (first) return found && Start(stamp);
  return Advance(stamp);
}

bool PrefixWalk::Toggle(uint32_t code) {
  const PublisherId p = static_cast<PublisherId>(code >> 2);
  const uint8_t tier = static_cast<uint8_t>(code & 3u);
  if (p >= npub_ || (filter_ && sc_.allowed[p] != allow_stamp_)) {
    Same();  // a holder the walk does not track: every candidate's holders are unchanged
    return alive_ != 0;
  }
  Flush();
  if (sc_.stamp[p] != current_) {
    sc_.stamp[p] = current_;
    sc_.tiers[p] = 0;
  }
  sc_.tiers[p] ^= static_cast<uint8_t>(1u << tier);
  return Advance(current_);
}

bool PrefixWalk::Advance(uint32_t stamp) {
  for (Candidate& c : cands_) {
    if (!c.alive) continue;
    uint8_t t = sc_.stamp[c.pub] == stamp ? sc_.tiers[c.pub] : 0;
    if (t == 0) {
      c.alive = false;
      --alive_;
      continue;
    }
    ++c.blocks;
    c.tiers_alive &= t;
    for (int k = 0; k < kNumTiers; ++k) c.tier_blocks[k] += (c.tiers_alive >> k) & 1u;
  }
  return alive_ != 0;
}

void PrefixWalk::Finish(std::vector<PublisherMatch>& matches) {
  Flush();
  matches.clear();
  for (const Candidate& c : cands_) {
    matches.push_back(
        PublisherMatch{c.pub, c.blocks, {c.tier_blocks[0], c.tier_blocks[1], c.tier_blocks[2]}});
  }
  std::sort(matches.begin(), matches.end(), [](const PublisherMatch& a, const PublisherMatch& b) {
    return a.blocks != b.blocks ? a.blocks > b.blocks : a.publisher < b.publisher;
  });
}

}  // namespace

LookupResult PrefixIndex::Lookup(std::span<const BlockKey> keys,
                                 const LookupOptions& options) const {
  LookupResult result;
  LookupInto(keys, options, result);
  return result;
}

void PrefixIndex::LookupInto(std::span<const BlockKey> keys, const LookupOptions& options,
                             LookupResult& result) const {
  result.matches.clear();
  result.blocks_walked = 0;
  result.degraded = false;
  size_t n = keys.size();
  if (options.max_blocks != 0 && options.max_blocks < n) n = options.max_blocks;
  if (n == 0) return;
  PrefixWalk walk(header_->geometry.publishers, options.candidates, keys.size());
  uint64_t prev_set = 0;
  for (size_t i = 0; i < n; ++i) {
    // The first block is read alone: most misses end there, and prefetching a prompt's
    // blocks before knowing its first is cached made misses pay for 24 wasted loads. Once it
    // is found, the walk runs kPrefetchAhead buckets (and half as many nodes) ahead.
    if (i == 1) {
      for (size_t j = 1; j < std::min(n, 2 + kPrefetchAhead); ++j) blocks_.PrefetchBucket(keys[j]);
      for (size_t j = 1; j < std::min(n, 2 + kPrefetchAhead / 2); ++j)
        blocks_.PrefetchNode(keys[j]);
    } else if (i > 1) {
      if (i + kPrefetchAhead < n) blocks_.PrefetchBucket(keys[i + kPrefetchAhead]);
      if (i + kPrefetchAhead / 2 < n) blocks_.PrefetchNode(keys[i + kPrefetchAhead / 2]);
    }
    uint64_t set = 0;
    uint32_t toggled = 0;
    internal::ReadResult rr = blocks_.ReadHolders(keys[i], walk.holders(), result.degraded, &set,
                                                  i == 0 ? 0 : prev_set, &walk.mixes(), &toggled);
    result.blocks_walked = static_cast<uint32_t>(i + 1);
    if (rr == internal::ReadResult::kSame) {
      walk.Same();
      continue;
    }
    prev_set = set;
    if (rr == internal::ReadResult::kToggle) {
      if (!walk.Toggle(toggled)) break;
      continue;
    }
    if (!walk.Next(rr == internal::ReadResult::kFound, i == 0)) break;
  }
  walk.Finish(result.matches);
}

}  // namespace kvidx::index
