// Where the parts of one block stripe and one engine stripe sit, and views over them.
//
// The one place that computes a stripe's sub-layout (see the drawing in index/layout.h):
// segment creation sizes and initialises stripes with it, and the index addresses them with
// it. Every part starts on a 64-byte boundary.
#pragma once

#include <cstdint>

#include "index/layout.h"

namespace kvidx::index::internal {

inline constexpr uint64_t kPartAlign = 64;
inline constexpr uint64_t AlignPart(uint64_t v) {
  return (v + kPartAlign - 1) / kPartAlign * kPartAlign;
}

// Byte offsets inside a block stripe: StripeHeader | u32 buckets[B] | BlockNode[b] |
// HolderChunk[c].
struct BlockStripeParts {
  uint64_t buckets;
  uint64_t blocks;
  uint64_t chunks;
  uint64_t stride;  // bytes of one stripe
};
BlockStripeParts BlockStripePartsOf(const StripeGeometry& sg);

// Byte offsets inside an engine stripe: EngineStripeHeader | u32 buckets[EB] | EngineNode[e].
struct EngineStripeParts {
  uint64_t buckets;
  uint64_t nodes;
  uint64_t stride;
};
EngineStripeParts EngineStripePartsOf(const StripeGeometry& sg);

// A block stripe's parts as pointers into a mapping.
struct StripeView {
  StripeHeader* h;
  uint32_t* buckets;
  BlockNode* blocks;
  HolderChunk* chunks;
};
inline StripeView MakeStripeView(char* stripe, const BlockStripeParts& parts) {
  return StripeView{reinterpret_cast<StripeHeader*>(stripe),
                    reinterpret_cast<uint32_t*>(stripe + parts.buckets),
                    reinterpret_cast<BlockNode*>(stripe + parts.blocks),
                    reinterpret_cast<HolderChunk*>(stripe + parts.chunks)};
}

struct EngineView {
  EngineStripeHeader* h;
  uint32_t* buckets;
  EngineNode* nodes;
};
inline EngineView MakeEngineView(char* stripe, const EngineStripeParts& parts) {
  return EngineView{reinterpret_cast<EngineStripeHeader*>(stripe),
                    reinterpret_cast<uint32_t*>(stripe + parts.buckets),
                    reinterpret_cast<EngineNode*>(stripe + parts.nodes)};
}

}  // namespace kvidx::index::internal
