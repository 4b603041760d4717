#include "wire/lineage_hash.h"

#include <xxhash.h>

#include <cstring>

namespace kvidx::wire {
namespace {

__extension__ typedef unsigned __int128 u128;

// Position bits and fragment bits by mode.
constexpr int kPositionBits[3] = {8, 16, 24};
constexpr int kFragmentBits[3] = {59, 55, 51};

int ModeFor(uint32_t position) {
  if (position <= 0xFFu) return 0;
  if (position <= 0xFFFFu) return 1;
  return 2;
}

uint64_t Low(u128 v, int bits) { return static_cast<uint64_t>(v & ((u128{1} << bits) - 1)); }

}  // namespace

std::optional<LineageHash> UnpackLineageHash(uint64_t hi, uint64_t lo) {
  const u128 v = (u128{hi} << 64) | lo;
  const int mode = static_cast<int>(hi >> 62);
  if (mode == 3) return std::nullopt;
  const int f = kFragmentBits[mode];
  LineageHash h;
  h.current = Low(v, f);
  h.parent = Low(v >> f, f);
  h.position = static_cast<uint32_t>(Low(v >> (2 * f), kPositionBits[mode]));
  return h;
}

std::optional<std::pair<uint64_t, uint64_t>> PackLineageHash(const LineageHash& h) {
  if (h.position > kMaxLineagePosition) return std::nullopt;
  const int mode = ModeFor(h.position);
  const int f = kFragmentBits[mode];
  u128 v = u128{static_cast<uint64_t>(mode)} << 126;
  v |= u128{h.position} << (2 * f);
  v |= u128{Low(h.parent, f)} << f;
  v |= Low(h.current, f);
  return std::pair{static_cast<uint64_t>(v >> 64), static_cast<uint64_t>(v)};
}

std::optional<LineageHash> CanonicalLineageHash(uint64_t current, uint64_t parent,
                                                uint32_t position) {
  if (position > kMaxLineagePosition) return std::nullopt;
  const int f = kFragmentBits[ModeFor(position)];
  return LineageHash{position, Low(parent, f), Low(current, f)};
}

uint64_t LineageEngineHash(const LineageHash& h) {
  uint8_t buf[20];
  for (int i = 0; i < 4; ++i) buf[i] = static_cast<uint8_t>(h.position >> (8 * i));
  for (int i = 0; i < 8; ++i) buf[4 + i] = static_cast<uint8_t>(h.parent >> (8 * i));
  for (int i = 0; i < 8; ++i) buf[12 + i] = static_cast<uint8_t>(h.current >> (8 * i));
  return XXH3_64bits_withSeed(buf, sizeof buf, kLineageSeed);
}

std::pair<uint64_t, uint64_t> U128FromBigEndian(const uint8_t* bytes, size_t size) {
  u128 v = 0;
  for (size_t i = 0; i < size && i < 16; ++i) v = (v << 8) | bytes[i];
  return {static_cast<uint64_t>(v >> 64), static_cast<uint64_t>(v)};
}

std::string U128Decimal(uint64_t hi, uint64_t lo) {
  u128 v = (u128{hi} << 64) | lo;
  std::string out;
  do {
    out.push_back(static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v != 0);
  return std::string(out.rbegin(), out.rend());
}

}  // namespace kvidx::wire
