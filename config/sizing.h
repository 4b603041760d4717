// Sizing the segment from a description of the workload instead of raw capacities:
//
//   [segment]
//   workload_blocks = 8200000                              # distinct blocks resident at once
//   workload_holders = [[1, 0.50], [8, 0.35], [64, 0.15]]  # blocks held by 1, 8, 64 publishers
//   headroom = 1.25                                        # capacity over the description
//
// gives the geometry's blocks, pairs, holder chunks and engine-hash entries (one per block:
// the engines share content hashes; `workload_private_hashes = true` when each engine hashes
// with its own seed, one per pair), and stripes of about 8 k blocks unless `stripes` is set.
// The raw capacities (blocks, pairs, holder_chunks, engine_hashes) cannot be given with it.
// kvidx-ingest --sizing prints what the description gives, byte for byte.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

#include "index/layout.h"

namespace kvidx::config {

struct HolderShare {
  uint32_t holders = 1;
  double fraction = 1;  // of the distinct blocks
};

struct Workload {
  uint64_t blocks = 0;  // 0: no workload description
  std::vector<HolderShare> holders;
  double headroom = 1.25;
  bool private_hashes = false;
  // Derived by ApplyWorkload: what the description expects resident.
  uint64_t expected_pairs = 0;
  uint64_t expected_chunks = 0;
};

// Sets g's blocks, pairs, holder_chunks, engine_hashes (and stripes when 0) from `w`.
absl::Status ApplyWorkload(Workload& w, index::Geometry* g);
// What the description expects and what the geometry holds: capacities, headroom and bytes.
std::string DescribeSizing(const Workload& w, const index::Geometry& g);

}  // namespace kvidx::config
