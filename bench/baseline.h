// What the benches compare kvidx's index with, in the same process: percentiles of a set of
// timings, and the baseline index a careful engineer writes in an afternoon (an unordered_map
// of block key -> holders and one of engine hash -> block key, under one std::mutex), with the
// same store, remove and prefix-lookup semantics as index::PrefixIndex (any tier).
#pragma once

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "index/block_key.h"

namespace kvidx::bench {

struct Percentiles {
  double p50, p99, mean;
};

// Nearest-rank percentile of sorted timings: index round((n - 1) * p).
inline double PercentileOf(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  return static_cast<double>(sorted[static_cast<size_t>((sorted.size() - 1) * p + 0.5)]);
}

inline Percentiles Summarize(std::vector<int64_t>& ns) {
  if (ns.empty()) return {0, 0, 0};
  std::sort(ns.begin(), ns.end());
  double sum = 0;
  for (int64_t v : ns) sum += static_cast<double>(v);
  return {PercentileOf(ns, 0.50), PercentileOf(ns, 0.99), sum / static_cast<double>(ns.size())};
}

class Baseline {
 public:
  Baseline(index::BlockKey root, uint32_t tokens_per_block, uint32_t pods)
      : root_(root), tokens_per_block_(tokens_per_block), stamp_(pods + 1, 0) {}

  // Stores n blocks of `pod` after the block whose engine hash is *parent (none: the root).
  // Returns false (and stores nothing) when the parent is unknown.
  bool Store(uint16_t pod, std::optional<uint64_t> parent, const uint64_t* hashes,
             const uint32_t* tokens, uint32_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    index::BlockKey pk = root_;
    if (parent) {
      auto it = engine_.find(*parent);
      if (it == engine_.end()) return false;
      pk = it->second;
    }
    for (uint32_t i = 0; i < n; ++i) {
      pk = index::ChainBlockKey(pk, {tokens + size_t{i} * tokens_per_block_, tokens_per_block_});
      engine_[hashes[i]] = pk;
      auto& holders = blocks_[pk];
      bool found = false;
      for (auto& h : holders) {
        if (h.pod == pod) {
          ++h.refs;
          found = true;
        }
      }
      if (!found) holders.push_back({pod, 0, 1});
    }
    return true;
  }

  void Remove(uint16_t pod, uint64_t hash) {
    std::lock_guard<std::mutex> lock(mu_);
    auto e = engine_.find(hash);
    if (e == engine_.end()) return;
    auto b = blocks_.find(e->second);
    if (b == blocks_.end()) return;
    auto& v = b->second;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i].pod == pod && --v[i].refs == 0) {
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    if (v.empty()) blocks_.erase(b);
  }

  // For every pod holding keys[0]: pods[c] and the number of leading keys it holds, counts[c].
  // Returns how many pods matched.
  size_t Lookup(const std::vector<index::BlockKey>& keys, std::vector<uint32_t>& counts,
                std::vector<uint16_t>* pods = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<uint16_t> local;
    std::vector<uint16_t>& cands = pods != nullptr ? *pods : local;
    cands.clear();
    counts.clear();
    size_t alive = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = blocks_.find(keys[i]);
      uint32_t s = ++clock_;
      if (it != blocks_.end()) {
        for (auto& h : it->second) stamp_[h.pod] = s;
      }
      if (i == 0) {
        if (it == blocks_.end()) break;
        for (auto& h : it->second) cands.push_back(h.pod);
        counts.assign(cands.size(), 1);
        alive = cands.size();
        continue;
      }
      for (size_t c = 0; c < cands.size(); ++c) {
        if (counts[c] != i) continue;  // already stopped
        if (stamp_[cands[c]] == s)
          ++counts[c];
        else
          --alive;
      }
      if (alive == 0) break;
    }
    return counts.size();
  }

 private:
  struct H {
    uint16_t pod;
    uint8_t tier;
    uint8_t refs;
  };
  std::mutex mu_;
  index::BlockKey root_;
  uint32_t tokens_per_block_;
  std::vector<uint32_t> stamp_;
  uint32_t clock_ = 0;
  std::unordered_map<index::BlockKey, std::vector<H>> blocks_;
  std::unordered_map<uint64_t, index::BlockKey> engine_;
};

}  // namespace kvidx::bench
