// Random per-publisher streams of index operations over prompts that share prefixes, and a
// reference model to compare the index with after (possibly concurrent, possibly crashed) runs.
#pragma once

#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "index/block_key.h"
#include "index/prefix_index.h"

namespace kvidx::testing {

inline constexpr uint32_t kPrompts = 48;
inline constexpr uint32_t kBlocksPerPrompt = 8;
inline constexpr uint32_t kBlockSize = 4;

// Prompt i shares its first (i % 5) blocks with every prompt of the same group (i % 6).
inline std::vector<uint32_t> PromptTokens(uint32_t prompt) {
  std::vector<uint32_t> t;
  uint32_t shared = prompt % 5;
  for (uint32_t b = 0; b < kBlocksPerPrompt; ++b) {
    uint32_t owner = b < shared ? 1000 + prompt % 6 : prompt;
    for (uint32_t k = 0; k < kBlockSize; ++k) t.push_back(owner * 7919 + b * 131 + k);
  }
  return t;
}

struct PromptKeys {
  std::vector<index::BlockKey> keys;
  std::vector<uint64_t> engine;  // a content hash, as a sha256_cbor-style engine would send
};

inline PromptKeys KeysOf(index::BlockKey root, uint32_t prompt) {
  PromptKeys pk;
  pk.keys = index::ChainBlockKeys(root, PromptTokens(prompt), kBlockSize);
  for (index::BlockKey k : pk.keys) pk.engine.push_back(k ^ 0x5DEECE66DULL);
  return pk;
}

struct Op {
  enum Kind { kStore, kRemove, kClear } kind;
  uint32_t prompt = 0;
  uint32_t block = 0;
  index::Tier tier = index::kGpu;
};

// A stream for one publisher. Stores walk a prompt from block 0 (each block one op, parent =
// the previous block), removes hit blocks the publisher holds (sometimes unknown ones).
inline std::vector<Op> GenerateStream(uint32_t seed, size_t n, bool with_clears = true) {
  std::mt19937 rng(seed);
  std::vector<Op> ops;
  std::vector<std::pair<uint32_t, uint32_t>> held;  // (prompt, block) stored at least once
  while (ops.size() < n) {
    uint32_t r = rng() % 100;
    if (with_clears && r == 0) {
      ops.push_back({Op::kClear});
      held.clear();
    } else if (r < 55 || held.empty()) {
      uint32_t p = rng() % kPrompts;
      uint32_t len = 1 + rng() % kBlocksPerPrompt;
      index::Tier tier = rng() % 4 == 0 ? index::kCpu : index::kGpu;
      for (uint32_t b = 0; b < len && ops.size() < n; ++b) {
        ops.push_back({Op::kStore, p, b, tier});
        held.emplace_back(p, b);
      }
    } else {
      auto [p, b] = held[rng() % held.size()];
      ops.push_back({Op::kRemove, p, b, rng() % 4 == 0 ? index::kCpu : index::kGpu});
    }
  }
  return ops;
}

// Applies one op; returns the index's status (NOT_FOUND removes are expected).
inline absl::Status ApplyOp(index::PrefixIndex& idx, index::PublisherId p, index::BlockKey root,
                            const Op& op) {
  static thread_local std::map<std::pair<index::BlockKey, uint32_t>, PromptKeys> cache;
  auto it = cache.find({root, op.prompt});
  if (it == cache.end())
    it = cache.emplace(std::pair{root, op.prompt}, KeysOf(root, op.prompt)).first;
  const PromptKeys& pk = it->second;
  switch (op.kind) {
    case Op::kStore: {
      auto tokens = PromptTokens(op.prompt);
      index::StoreRequest req;
      req.tier = op.tier;
      if (op.block > 0) req.parent_engine_hash = pk.engine[op.block - 1];
      req.engine_hashes = std::span(pk.engine).subspan(op.block, 1);
      req.tokens = std::span<const uint32_t>(tokens).subspan(op.block * kBlockSize, kBlockSize);
      return idx.Store(p, req).status();
    }
    case Op::kRemove:
      return idx.Remove(p, op.tier, pk.engine[op.block]);
    case Op::kClear:
      return idx.ClearPublisher(p);
  }
  return absl::OkStatus();
}

// What the index must hold: (block key, publisher, tier) -> references.
class Model {
 public:
  using Entry = std::tuple<index::BlockKey, index::PublisherId, uint8_t>;

  Model(index::BlockKey root) : root_(root) {}

  void Apply(index::PublisherId p, const Op& op) {
    index::BlockKey key = KeysOf(root_, op.prompt).keys[op.block];
    switch (op.kind) {
      case Op::kStore: {
        // A store whose parent nobody has ever stored cannot be keyed: an orphan. Parents are
        // stored first in every stream, and mappings are never forgotten here, so it is keyed.
        uint8_t& refs = refs_[{key, p, op.tier}];
        if (refs < 255) ++refs;
        break;
      }
      case Op::kRemove: {
        auto it = refs_.find({key, p, op.tier});
        if (it != refs_.end() && --it->second == 0) refs_.erase(it);
        break;
      }
      case Op::kClear:
        for (auto it = refs_.begin(); it != refs_.end();) {
          it = std::get<1>(it->first) == p ? refs_.erase(it) : std::next(it);
        }
        break;
    }
  }

  // Empty if the index holds exactly the model; else a description of the first differences.
  std::string Diff(const index::PrefixIndex& idx) const {
    std::map<Entry, uint8_t> actual;
    for (const auto& e : idx.Dump()) {
      actual[{e.key, e.holder.publisher, e.holder.tier}] = e.holder.refs;
    }
    std::ostringstream out;
    int shown = 0;
    for (const auto& [k, refs] : refs_) {
      auto it = actual.find(k);
      if (it == actual.end() || it->second != refs) {
        if (shown++ < 5) {
          out << "missing/wrong key=" << std::hex << std::get<0>(k) << std::dec
              << " pub=" << std::get<1>(k) << " tier=" << int(std::get<2>(k))
              << " want=" << int(refs) << " got=" << (it == actual.end() ? -1 : it->second) << "\n";
        }
      }
    }
    for (const auto& [k, refs] : actual) {
      if (!refs_.count(k) && shown++ < 10) {
        out << "extra key=" << std::hex << std::get<0>(k) << std::dec << " pub=" << std::get<1>(k)
            << " tier=" << int(std::get<2>(k)) << " refs=" << int(refs) << "\n";
      }
    }
    if (actual.size() != refs_.size()) {
      out << "sizes: index " << actual.size() << " model " << refs_.size() << "\n";
    }
    return out.str();
  }

  size_t size() const { return refs_.size(); }

 private:
  index::BlockKey root_;
  std::map<Entry, uint8_t> refs_;
};

}  // namespace kvidx::testing
