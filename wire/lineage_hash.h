// NVIDIA KVBM's positional lineage hash (../shared/spec/wire.md §10): what kvidx keeps of it
// and the 64-bit engine hash it keys a KVBM block by.
//
// The u128 form packs, most significant bits first, a 2-bit mode, the block's position (8, 16
// or 24 bits by mode 0, 1, 2), the parent's fragment and the block's own fragment (59, 55 or
// 51 bits each). The struct form carries full 64-bit current and parent hashes and a 32-bit
// position; kvidx truncates them to the fragment width the u128 form has at that position, so
// the two forms of one hash name one block. Position p is 0-based: a holder of the block at
// position p holds the prompt's first p + 1 blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace kvidx::wire {

struct LineageHash {
  uint32_t position = 0;
  uint64_t parent = 0;   // the parent's fragment (0 for position 0)
  uint64_t current = 0;  // this block's fragment
};

inline constexpr uint32_t kMaxLineagePosition = (1u << 24) - 1;

// The fields of a u128 (high, low) hash; nullopt for mode 3 (not defined).
std::optional<LineageHash> UnpackLineageHash(uint64_t hi, uint64_t lo);
// The u128 form of `h` (fragments truncated to its position's width); nullopt past
// kMaxLineagePosition.
std::optional<std::pair<uint64_t, uint64_t>> PackLineageHash(const LineageHash& h);
// The struct form's fields, truncated as the u128 form would carry them.
std::optional<LineageHash> CanonicalLineageHash(uint64_t current, uint64_t parent,
                                                uint32_t position);
// The 64-bit engine hash of a block: XXH3_64 of position (u32), parent and current fragments
// (u64), little-endian, seed kLineageSeed. Every field counts: blocks of one content at
// two positions, or under two parents, are two blocks.
inline constexpr uint64_t kLineageSeed = 0x6b7662'6d504c48ULL;  // "kvbmPLH"
uint64_t LineageEngineHash(const LineageHash& h);

// A big-endian u128 of 1..16 bytes (fewer: leading zeros left out) as (high, low).
std::pair<uint64_t, uint64_t> U128FromBigEndian(const uint8_t* bytes, size_t size);

// A u128 (an instance id) in decimal.
std::string U128Decimal(uint64_t hi, uint64_t lo);

}  // namespace kvidx::wire
