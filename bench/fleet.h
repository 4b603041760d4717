// The "fleet" workload of DESIGN.md §7, generated deterministically at a chosen scale.
//
// Blocks are numbered; every block has a fixed parent (or none) and 16 token ids derived from
// its number, so block keys chain exactly as an engine's would. Groups share a prefix of 8..512
// blocks (log-uniform) across 1, 8 or 64 pods (by share of blocks: 50 / 35 / 15 %), and each
// group ends in one tail of 4..64 blocks held by one of its pods. Stores go out in batches of 8
// blocks with a parent hash; 5 % of batches are sent twice (duplicate stores).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "index/layout.h"

namespace kvidx::bench {

inline constexpr uint32_t kFleetPods = 256;
inline constexpr uint32_t kTokensPerBlock = 16;

struct FleetChain {
  uint32_t first;   // first block number
  uint32_t length;  // blocks
  int64_t parent;   // block number before `first` (-1: none)
  std::vector<uint16_t> pods;
  int holders_class;  // 1, 8 or 64
};

struct StoreBatch {
  uint16_t pod;
  uint32_t first;
  uint32_t count;
  int64_t parent;  // block number, or -1
};

struct Fleet {
  uint32_t blocks = 0;
  uint64_t pairs = 0;
  std::vector<FleetChain> chains;
  std::vector<StoreBatch> batches;  // in apply order
  std::vector<uint32_t> tokens;     // kTokensPerBlock per block
  uint64_t blocks_by_class[3] = {0, 0, 0};

  uint64_t EngineHash(uint32_t block) const { return 0x9E3779B97F4A7C15ULL * (block + 1); }
  const uint32_t* Tokens(uint32_t block) const { return &tokens[size_t{block} * kTokensPerBlock]; }
};

inline uint32_t NextPow2(uint64_t v) {
  uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// A segment geometry for `blocks` blocks and `pairs` pairs with 5 % headroom.
inline index::Geometry GeometryFor(uint64_t blocks, uint64_t pairs, uint32_t publishers = 512) {
  index::Geometry g;
  g.blocks = blocks + blocks / 20;
  g.pairs = pairs + pairs / 20;
  g.publishers = publishers;
  g.namespaces = 4;
  g.stripes = NextPow2(std::max<uint64_t>(64, g.blocks / 2048));
  // The fleet's engines share content hashes (one entry per block): the table is sized for
  // that, as a deployment whose engines all hash with a fixed seed would configure it. The
  // default (one entry per pair) covers engines that hash with their own seeds.
  g.engine_hashes = g.blocks + g.blocks / 4;
  return g;
}

inline uint32_t LogUniform(std::mt19937_64& rng, uint32_t lo, uint32_t hi) {
  std::uniform_real_distribution<double> d(std::log(lo), std::log(hi + 1.0));
  return std::min(hi, static_cast<uint32_t>(std::exp(d(rng))));
}

inline Fleet MakeFleet(uint32_t target_blocks, uint64_t seed = 42) {
  Fleet f;
  std::mt19937_64 rng(seed);
  const double share[3] = {0.50, 0.35, 0.15};
  const int holders[3] = {1, 8, 64};
  uint64_t by_class[3] = {0, 0, 0};
  std::vector<uint16_t> all(kFleetPods);
  for (uint32_t i = 0; i < kFleetPods; ++i) all[i] = static_cast<uint16_t>(i);
  while (f.blocks < target_blocks) {
    // Pick the class that is furthest below its share.
    int c = 0;
    double worst = 1e18;
    for (int k = 0; k < 3; ++k) {
      double ratio = by_class[k] / share[k];
      if (ratio < worst) worst = ratio, c = k;
    }
    FleetChain prefix;
    prefix.first = f.blocks;
    prefix.length = LogUniform(rng, 8, 512);
    prefix.parent = -1;
    std::shuffle(all.begin(), all.end(), rng);
    prefix.pods.assign(all.begin(), all.begin() + holders[c]);
    prefix.holders_class = holders[c];
    f.blocks += prefix.length;
    by_class[c] += prefix.length;
    FleetChain tail;
    tail.first = f.blocks;
    tail.length = LogUniform(rng, 4, 64);
    tail.parent = prefix.first + prefix.length - 1;
    tail.pods = {prefix.pods[rng() % prefix.pods.size()]};
    tail.holders_class = 1;
    f.blocks += tail.length;
    by_class[0] += tail.length;
    f.chains.push_back(prefix);
    f.chains.push_back(tail);
  }
  for (int k = 0; k < 3; ++k) f.blocks_by_class[k] = by_class[k];
  f.tokens.resize(size_t{f.blocks} * kTokensPerBlock);
  // Token ids from a mixed counter: no two blocks share content by accident.
  for (size_t i = 0; i < f.tokens.size(); ++i) {
    uint64_t x = i + 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    f.tokens[i] = static_cast<uint32_t>((x ^ (x >> 31)) % 151000);
  }
  std::uniform_real_distribution<double> u(0, 1);
  for (size_t ci = 0; ci < f.chains.size(); ci += 2) {
    for (uint16_t pod : f.chains[ci].pods) {
      for (size_t which : {ci, ci + 1}) {
        const FleetChain& ch = f.chains[which];
        if (which == ci + 1 && ch.pods[0] != pod) continue;
        for (uint32_t off = 0; off < ch.length; off += 8) {
          StoreBatch b{pod, ch.first + off, std::min(8u, ch.length - off),
                       off == 0 ? ch.parent : int64_t{ch.first + off - 1}};
          f.batches.push_back(b);
          f.pairs += b.count;
          if (u(rng) < 0.05) f.batches.push_back(b);  // duplicate store
        }
      }
    }
  }
  return f;
}

}  // namespace kvidx::bench
