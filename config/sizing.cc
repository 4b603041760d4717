#include "config/sizing.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "config/read_workload.h"

namespace kvidx::config {
namespace {

uint64_t NextPow2(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Holder chunks a block of h holders takes: two holders sit in the node, seven in each chunk.
uint64_t ChunksFor(uint32_t h) {
  return h > index::kInlineHolders
             ? (h - index::kInlineHolders + index::kChunkHolders - 1) / index::kChunkHolders
             : 0;
}

absl::Status Bad(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

}  // namespace

absl::Status ReadWorkload(const toml::table& segment, const std::string& where, Workload* w,
                          std::set<std::string>* known) {
  known->insert({"workload_blocks", "workload_holders", "workload_private_hashes", "headroom"});
  if (const toml::node* n = segment.get("workload_blocks")) {
    auto v = n->value<int64_t>();
    if (!v || *v <= 0) return Bad(where, "workload_blocks must be a positive integer");
    w->blocks = static_cast<uint64_t>(*v);
  }
  if (const toml::node* n = segment.get("headroom")) {
    auto v = n->value<double>();
    if (!v || *v < 1.0 || *v > 16.0) return Bad(where, "headroom must be a number in [1, 16]");
    w->headroom = *v;
  }
  if (const toml::node* n = segment.get("workload_private_hashes")) {
    auto v = n->value<bool>();
    if (!v) return Bad(where, "workload_private_hashes must be true or false");
    w->private_hashes = *v;
  }
  if (const toml::node* n = segment.get("workload_holders")) {
    const toml::array* a = n->as_array();
    if (a == nullptr || a->empty() || a->size() > 64)
      return Bad(where, "workload_holders must be 1 to 64 [holders, fraction] pairs");
    for (const toml::node& e : *a) {
      const toml::array* pair = e.as_array();
      int64_t h = 0;
      double f = 0;
      if (pair != nullptr && pair->size() == 2) {
        h = (*pair)[0].value_or<int64_t>(0);
        f = (*pair)[1].value_or<double>(0.0);
      }
      if (h < 1 || h > 65000 || f <= 0 || f > 1)
        return Bad(where, "each workload_holders entry is [holders 1..65000, fraction in (0, 1]]");
      w->holders.push_back({static_cast<uint32_t>(h), f});
    }
  }
  if (w->blocks == 0 && (segment.contains("workload_holders") || segment.contains("headroom") ||
                         segment.contains("workload_private_hashes"))) {
    return Bad(where,
               "workload_holders, workload_private_hashes and headroom need workload_blocks");
  }
  if (w->blocks != 0) {
    for (const char* raw : {"blocks", "pairs", "holder_chunks", "engine_hashes"}) {
      if (segment.contains(raw))
        return Bad(where, absl::StrCat("'", raw, "' and workload_blocks both size the segment"));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyWorkload(Workload& w, index::Geometry* g) {
  if (w.blocks == 0) return absl::OkStatus();
  std::vector<HolderShare> shares = w.holders;
  if (shares.empty()) shares.push_back({1, 1.0});
  double sum = 0, pairs = 0, chunks = 0, chunks_sq = 0;
  for (const HolderShare& s : shares) {
    sum += s.fraction;
    pairs += s.fraction * s.holders;
    const auto c = static_cast<double>(ChunksFor(s.holders));
    chunks += s.fraction * c;
    chunks_sq += s.fraction * c * c;
  }
  if (std::fabs(sum - 1.0) > 1e-6)
    return absl::InvalidArgumentError(
        absl::StrFormat("workload_holders: the fractions sum to %.6g, not 1", sum));
  const auto blocks = static_cast<double>(w.blocks);
  w.expected_pairs = static_cast<uint64_t>(std::ceil(blocks * pairs));
  w.expected_chunks = static_cast<uint64_t>(std::ceil(blocks * chunks));
  if (g->stripes == 0)
    g->stripes = static_cast<uint32_t>(NextPow2(std::max<uint64_t>(64, w.blocks / 8192)));
  // Chunks vary by stripe more than blocks do (a stripe's count is a sum of per-block counts):
  // six standard deviations of a stripe's share on top, before the headroom.
  const double per_stripe = blocks / g->stripes;
  const double spread = 6 * std::sqrt(per_stripe * chunks_sq) * g->stripes;
  g->blocks = static_cast<uint64_t>(std::ceil(blocks * w.headroom));
  g->pairs = static_cast<uint64_t>(std::ceil(blocks * pairs * w.headroom));
  g->holder_chunks = static_cast<uint64_t>(std::ceil((blocks * chunks + spread) * w.headroom)) + 1;
  g->engine_hashes = w.private_hashes ? g->pairs : g->blocks;
  return absl::OkStatus();
}

}  // namespace kvidx::config
