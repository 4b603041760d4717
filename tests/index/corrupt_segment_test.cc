// Issue 10: writers bounds-check every index they follow in the segment. A child process
// stores, removes and looks up while the test scribbles over the stripes' links (bucket heads,
// chains, free lists, store-order links) with out-of-range values and with in-range values that
// make cycles; it must neither crash (ASan in CI sees any access outside the segment's arrays)
// nor hang (the child runs under a deadline), and the corrupt stripes are repaired.
#include <sys/wait.h>

#include <random>

#include "gtest/gtest.h"

#include "index/internal/block_stripe.h"
#include "index/prefix_index.h"
#include "tests/common/children.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

using namespace ::kvidx::testing;

// Overwrites `n` links of random stripes with hostile values.
void Scribble(const internal::BlockStripes& stripes, std::mt19937_64& rng, int n) {
  const StripeGeometry& sg = stripes.sg();
  auto hostile = [&](uint32_t cap) -> uint32_t {
    switch (rng() % 4) {
      case 0:
        return cap + static_cast<uint32_t>(rng() % 1000);  // just past the end
      case 1:
        return 0xFFFFFFFEu;  // far past it
      default:
        return static_cast<uint32_t>(rng() % cap);  // in range: cycles, sharing
    }
  };
  for (int k = 0; k < n; ++k) {
    internal::StripeView v = stripes.stripe(static_cast<uint32_t>(rng() % stripes.count()));
    uint32_t b = static_cast<uint32_t>(rng() % sg.blocks_per_stripe);
    uint32_t c = static_cast<uint32_t>(rng() % sg.chunks_per_stripe);
    switch (rng() % 9) {
      case 0:
        v.buckets[rng() % sg.buckets_per_stripe] = hostile(sg.blocks_per_stripe);
        break;
      case 1:
        v.blocks[b].next = hostile(sg.blocks_per_stripe);
        break;
      case 2:
        v.blocks[b].chunk_head = hostile(sg.chunks_per_stripe);
        break;
      case 3:
        v.blocks[b].lru_prev = hostile(sg.blocks_per_stripe);
        break;
      case 4:
        v.blocks[b].lru_next = hostile(sg.blocks_per_stripe);
        break;
      case 5:
        v.chunks[c].next = hostile(sg.chunks_per_stripe);
        break;
      case 6:
        v.h->free_blocks = hostile(sg.blocks_per_stripe);
        break;
      case 7:
        v.h->free_chunks = hostile(sg.chunks_per_stripe);
        break;
      default:
        v.h->lru_oldest = hostile(sg.blocks_per_stripe);
        break;
    }
  }
}

TEST(CorruptSegmentTest, WritersNeverFollowAnIndexOutOfTheSegmentNorLoopOnACycle) {
  ScopedSegment seg("corrupt");
  PrefixIndex& idx = seg.index();
  auto ns = idx.RegisterNamespace({.model = "m", .block_size = 4});
  ASSERT_TRUE(ns.ok());
  std::vector<PublisherId> pubs;
  for (int i = 0; i < 4; ++i) {
    auto p = idx.RegisterPublisher({.pod = "pod-" + std::to_string(i), .ns = *ns});
    ASSERT_TRUE(p.ok()) << p.status();
    pubs.push_back(*p);
  }
  const uint64_t repairs_before = idx.Stats().stripe_repairs;
  ChildGuard child = ForkChild([&] {
    internal::BlockStripes stripes(seg.segment()->base(), idx.header());
    std::mt19937_64 rng(20261201);
    for (int round = 0; round < 300; ++round) {
      for (int k = 0; k < 200; ++k) {
        PublisherId p = pubs[rng() % pubs.size()];
        uint64_t h = rng() % 3000;
        // Keys spread over every stripe (the stripe is the key's bits 40..).
        BlockKey key = (h * 0x9E3779B97F4A7C15ull) | 1;
        if (rng() % 3 != 0) {
          (void)idx.StoreBlock(p, kGpu, h, key);
        } else {
          (void)idx.Remove(p, kGpu, h);
        }
      }
      if (round % 50 == 49) (void)idx.ClearPublisher(pubs[rng() % pubs.size()]);
      std::vector<BlockKey> keys;
      for (int k = 0; k < 16; ++k) keys.push_back((rng() % 3000 * 0x9E3779B97F4A7C15ull) | 1);
      (void)idx.Lookup(keys);
      Scribble(stripes, rng, 8);
    }
    return 0;
  });
  int st = child.Wait(std::chrono::seconds(120));
  ASSERT_GE(st, 0) << "the writer hung on a corrupt segment";
  ASSERT_TRUE(WIFEXITED(st)) << "the writer crashed on a corrupt segment (signal "
                             << (WIFSIGNALED(st) ? WTERMSIG(st) : 0) << ")";
  EXPECT_EQ(WEXITSTATUS(st), 0);
  IndexStats after = idx.Stats();
  EXPECT_GT(after.stripe_repairs, repairs_before) << "no corruption was ever noticed";
  // What is left is a consistent index: every stripe repaired cleanly reads and writes again.
  EXPECT_EQ(idx.StripesMidUpdate(), 0u);
  EXPECT_TRUE(idx.StoreBlock(pubs[0], kGpu, 424242, (424242 * 0x9E3779B97F4A7C15ull) | 1).ok());
  EXPECT_FALSE(idx.Holders((424242 * 0x9E3779B97F4A7C15ull) | 1).empty());
}

}  // namespace
}  // namespace kvidx::index
