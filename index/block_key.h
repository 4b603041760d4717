// kvidx's own block keys: a chained 64-bit content hash any router can compute from token ids.
//
// The exact definition, with test vectors, is in docs/block-keys.md. In short (XXH3-64 from
// xxHash 0.8):
//   root(ns)  = XXH3_64("kvidx-ns-v1" 0x00 model 0x00 lora_name, seed = kRootSeed)
//   key(i)    = XXH3_64(tokens of block i as u32 little-endian [, 0xFFFFFFFF, extra bytes],
//                       seed = key(i-1)),  key(-1) = root(ns)
//   engine-keyed namespaces (KVBM): key = XXH3_64(engine_hash as u64 little-endian, seed = root)
// Block keys are pure functions of their inputs: thread-safe, no state.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace kvidx::index {

using BlockKey = uint64_t;

// "kvidxv01" read as a big-endian u64.
inline constexpr uint64_t kRootSeed = 0x6b76696478763031ULL;

// The root of a namespace (model + LoRA adapter name; "" for the base model).
BlockKey NamespaceRoot(std::string_view model, std::string_view lora_name);

// The key of one block given its parent's key (or the namespace root for the first block).
// `extra` is mixed in only when non-empty.
BlockKey ChainBlockKey(BlockKey parent, std::span<const uint32_t> tokens,
                       std::span<const uint8_t> extra = {});

// The key of a block in a namespace keyed by engine hashes (no tokens on the wire).
BlockKey EngineHashKey(BlockKey root, uint64_t engine_hash);

// The extra-key bytes a cache salt gives a prompt's first block: msgpack of the one-element
// array [salt] (vLLM's extra-keys tuple when the salt is its only entry; docs/block-keys.md).
std::vector<uint8_t> CacheSaltExtra(std::string_view salt);

// Keys of every *full* block of `tokens`, chunked by `block_size`, starting at `parent`.
// A trailing partial block is not keyed. block_size 0 yields no keys.
std::vector<BlockKey> ChainBlockKeys(BlockKey parent, std::span<const uint32_t> tokens,
                                     uint32_t block_size);
// The same with per-block extra keys: block i mixes extra[i] (none past extra's end, or where
// the entry is empty).
std::vector<BlockKey> ChainBlockKeys(BlockKey parent, std::span<const uint32_t> tokens,
                                     uint32_t block_size,
                                     std::span<const std::span<const uint8_t>> extra);

}  // namespace kvidx::index
