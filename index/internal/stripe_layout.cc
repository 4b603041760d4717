#include "index/internal/stripe_layout.h"

namespace kvidx::index::internal {

BlockStripeParts BlockStripePartsOf(const StripeGeometry& sg) {
  BlockStripeParts p{};
  p.buckets = AlignPart(sizeof(StripeHeader));
  p.blocks = p.buckets + AlignPart(uint64_t{sg.buckets_per_stripe} * sizeof(uint32_t));
  p.chunks = p.blocks + AlignPart(uint64_t{sg.blocks_per_stripe} * sizeof(BlockNode));
  p.stride = p.chunks + AlignPart(uint64_t{sg.chunks_per_stripe} * sizeof(HolderChunk));
  return p;
}

EngineStripeParts EngineStripePartsOf(const StripeGeometry& sg) {
  EngineStripeParts p{};
  p.buckets = AlignPart(sizeof(EngineStripeHeader));
  p.nodes = p.buckets + AlignPart(uint64_t{sg.engine_buckets_per_stripe} * sizeof(uint32_t));
  p.stride = p.nodes + AlignPart(uint64_t{sg.engine_nodes_per_stripe} * sizeof(EngineNode));
  return p;
}

}  // namespace kvidx::index::internal
