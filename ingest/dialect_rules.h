// Rules both decoders (the general one and the zero-allocation fast path) share, so that they
// can never disagree: which tier a medium names, and how a binary block hash folds to 64 bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "index/layout.h"

namespace kvidx::ingest {

// vLLM/SGLang/KVBM medium names ("GPU", "CPU", "CPU_PINNED", "STORAGE", "DISK", "EXTERNAL",
// lower-case variants); anything else, and none, is the GPU.
inline index::Tier TierFromMedium(std::string_view m) {
  if (m == "CPU" || m == "CPU_PINNED" || m == "cpu") return index::kCpu;
  if (m == "STORAGE" || m == "DISK" || m == "EXTERNAL" || m == "disk") return index::kDisk;
  return index::kGpu;
}

// A binary block hash (n > 0 bytes) as the engine's 64-bit integer hash. SGLang publishes the
// first 8 bytes as a signed int64 (the same bits, read big-endian); vLLM uses
// int.from_bytes(digest, "big") & (2**64 - 1), i.e. the last 8 bytes.
inline uint64_t FoldBinaryHash(const uint8_t* p, size_t n, bool sglang) {
  uint64_t v = 0;
  if (sglang) {
    for (size_t i = 0; i < (n < 8 ? n : 8); ++i) v = (v << 8) | p[i];
  } else {
    for (size_t i = n > 8 ? n - 8 : 0; i < n; ++i) v = (v << 8) | p[i];
  }
  return v;
}

}  // namespace kvidx::ingest
