// DescribeSizing (config/sizing.h): apart from the rest of the sizing, which the configuration
// fuzzer links without the index's layout code.
#include "absl/strings/str_format.h"

#include "config/sizing.h"
#include "index/segment.h"

namespace kvidx::config {

std::string DescribeSizing(const Workload& w, const index::Geometry& g) {
  std::string out;
  if (w.blocks != 0) {
    absl::StrAppendFormat(&out,
                          "workload: %u blocks, %u pairs (%.2f holders a block), %u holder "
                          "chunks; headroom %.2fx\n",
                          w.blocks, w.expected_pairs,
                          static_cast<double>(w.expected_pairs) / static_cast<double>(w.blocks),
                          w.expected_chunks, w.headroom);
  }
  absl::StrAppendFormat(&out,
                        "capacity: %u blocks, %u pairs, %u holder chunks, %u engine-hash "
                        "entries, %u stripes, %u publishers, %u namespaces\n",
                        g.blocks, g.pairs, g.holder_chunks, g.engine_hashes, g.stripes,
                        g.publishers, g.namespaces);
  auto layout = index::ComputeLayout(g);
  if (!layout.ok()) return out + "layout: " + std::string(layout.status().message()) + "\n";
  const uint64_t bytes = layout->total_size;
  absl::StrAppendFormat(&out, "segment: %u bytes (%.2f GiB), %.1f bytes a pair at capacity", bytes,
                        static_cast<double>(bytes) / (1u << 30),
                        static_cast<double>(bytes) / static_cast<double>(g.pairs));
  if (w.blocks != 0) {
    absl::StrAppendFormat(&out, ", %.1f at the described workload",
                          static_cast<double>(bytes) / static_cast<double>(w.expected_pairs));
  }
  return out + "\n";
}

}  // namespace kvidx::config
