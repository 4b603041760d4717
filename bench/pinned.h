// The "pinned" workload: the one the SGLang Model Gateway's radix-tree crate publishes its
// figures on (smg-project/smg, crates/radix_tree/tests/pinned_bench.rs), rebuilt here from its
// definition with kvidx's own generator:
// - 256 holders (pods); a budget of 10 M holder-blocks for the shared spines, split 50 / 35 /
//   15 % over families held by 1, 8 and 64 holders; a spine is log-uniform 8..512 blocks (the
//   first 64-holder family is forced to 96, the depth-78 gate cell needs it); a family's
//   members are base + 7k (mod 256), base random;
// - per (family, member) instance: the spine in batches of 8 blocks, each with its parent, then
//   a private tail of uniform 4..64 blocks after the spine's last block; 5 % of the instance's
//   batches re-sent after it (duplicate stores); 20 % of instances then lose one interior spine
//   block (a remove);
// - holders interleaved at random, each holder's own order kept.
// About 45 k families and 12.8 M resident holder-blocks at the default scale, 1.55 holders per
// distinct block. Blocks are numbered: a spine's and a tail's blocks are consecutive, so a
// batch's tokens are one span; every block has 16 token ids of its own.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace kvidx::bench {

inline constexpr uint32_t kPinnedHolders = 256;
inline constexpr uint32_t kPinnedTokensPerBlock = 16;
inline constexpr uint32_t kPinnedBatch = 8;
inline constexpr uint32_t kGateDepth = 78;

struct PinnedFamily {
  uint32_t first;  // first spine block
  uint32_t length;
  std::vector<uint16_t> holders;
};

struct PinnedOp {
  enum Kind : uint8_t { kStore, kRemove };
  Kind kind;
  uint8_t count;  // blocks (1 for a remove)
  uint16_t holder;
  uint32_t first;  // first block stored, or the block removed
  int64_t parent;  // block before `first` (-1: none); stores only
};

struct PinnedWorkload {
  uint32_t blocks = 0;         // distinct blocks
  uint64_t holder_blocks = 0;  // generated residencies (spines + tails)
  uint64_t removed = 0;        // of which gap removes take back
  uint64_t stream_blocks = 0;  // blocks in the op stream (stores incl. duplicates, removes)
  std::vector<PinnedFamily> families;
  std::vector<PinnedOp> ops;
  std::vector<uint32_t> tokens;  // kPinnedTokensPerBlock per block

  uint64_t resident() const { return holder_blocks - removed; }
  uint64_t EngineHash(uint32_t block) const {
    uint64_t x = (uint64_t{block} + 1) * 0x9E3779B97F4A7C15ULL;
    x ^= x >> 29;
    return x * 0xBF58476D1CE4E5B9ULL | 1;
  }
  const uint32_t* Tokens(uint32_t block) const {
    return &tokens[size_t{block} * kPinnedTokensPerBlock];
  }
};

// `spine_budget` holder-blocks over the spines (10 M: the published scale).
inline PinnedWorkload MakePinned(uint64_t spine_budget, uint64_t seed) {
  PinnedWorkload w;
  std::mt19937_64 rng(seed);
  auto below = [&](uint64_t n) { return rng() % n; };
  auto chance = [&](uint64_t pct) { return below(100) < pct; };
  auto log_uniform = [&](double lo, double hi) {
    double u = static_cast<double>(rng() >> 11) / static_cast<double>(1ULL << 53);
    return static_cast<uint32_t>(
        std::lround(std::exp(std::log(lo) + u * (std::log(hi) - std::log(lo)))));
  };
  const std::pair<uint32_t, uint64_t> mix[3] = {{1, 50}, {8, 35}, {64, 15}};
  bool force_gate = true;
  for (auto [h, pct] : mix) {
    uint64_t budget = spine_budget * pct / 100, used = 0;
    while (used < budget) {
      uint32_t len = (force_gate && h == 64) ? 96 : log_uniform(8, 512);
      if (h == 64) force_gate = false;
      PinnedFamily f{w.blocks, len, {}};
      w.blocks += len;
      uint64_t base = below(kPinnedHolders);
      for (uint32_t k = 0; k < h; ++k) {
        f.holders.push_back(static_cast<uint16_t>((base + 7 * k) % kPinnedHolders));
      }
      std::sort(f.holders.begin(), f.holders.end());
      f.holders.erase(std::unique(f.holders.begin(), f.holders.end()), f.holders.end());
      used += uint64_t{len} * f.holders.size();
      w.families.push_back(std::move(f));
    }
  }
  std::vector<std::vector<PinnedOp>> script(kPinnedHolders);
  std::vector<PinnedOp> batches;
  for (const PinnedFamily& f : w.families) {
    for (uint16_t holder : f.holders) {
      batches.clear();
      auto chunk = [&](uint32_t first, uint32_t len, int64_t parent) {
        for (uint32_t off = 0; off < len; off += kPinnedBatch) {
          uint32_t n = std::min(kPinnedBatch, len - off);
          batches.push_back(PinnedOp{PinnedOp::kStore, static_cast<uint8_t>(n), holder, first + off,
                                     off == 0 ? parent : int64_t{first + off - 1}});
        }
      };
      chunk(f.first, f.length, -1);
      uint32_t tail = 4 + static_cast<uint32_t>(below(64 - 4 + 1));
      uint32_t tail_first = w.blocks;
      w.blocks += tail;
      chunk(tail_first, tail, int64_t{f.first + f.length - 1});
      w.holder_blocks += f.length + tail;
      auto& s = script[holder];
      s.insert(s.end(), batches.begin(), batches.end());
      for (const PinnedOp& b : batches) {
        if (chance(5)) s.push_back(b);
      }
      if (f.length > 2 && chance(20)) {
        uint32_t victim = f.first + 1 + static_cast<uint32_t>(below(f.length - 2));
        s.push_back(PinnedOp{PinnedOp::kRemove, 1, holder, victim, -1});
        ++w.removed;
      }
    }
  }
  std::vector<size_t> cursor(kPinnedHolders, 0);
  std::vector<uint16_t> live;
  for (uint32_t h = 0; h < kPinnedHolders; ++h) {
    if (!script[h].empty()) live.push_back(static_cast<uint16_t>(h));
  }
  while (!live.empty()) {
    size_t li = below(live.size());
    uint16_t h = live[li];
    const PinnedOp& op = script[h][cursor[h]++];
    w.ops.push_back(op);
    w.stream_blocks += op.count;
    if (cursor[h] == script[h].size()) {
      live[li] = live.back();
      live.pop_back();
    }
  }
  w.tokens.resize(size_t{w.blocks} * kPinnedTokensPerBlock);
  for (size_t i = 0; i < w.tokens.size(); ++i) {
    uint64_t x = (i + seed) * 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    w.tokens[i] = static_cast<uint32_t>((x ^ (x >> 31)) % 151000);
  }
  return w;
}

}  // namespace kvidx::bench
