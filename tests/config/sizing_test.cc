// config/sizing.h: a segment sized from a workload description holds that workload, filled
// for real, without refusing or evicting anything; the description's keys are checked.
#include "config/sizing.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <random>

#include "config/config.h"
#include "index/prefix_index.h"
#include "index/segment.h"

namespace kvidx::config {
namespace {

absl::StatusOr<Config> Parse(const std::string& segment) {
  return ParseConfig("[segment]\nname = \"s\"\n" + segment, "test.toml");
}

TEST(SizingTest, TheDescriptionGivesTheCapacities) {
  auto c = Parse(
      "workload_blocks = 100000\nworkload_holders = [[1, 0.5], [8, 0.35], [64, 0.15]]\n"
      "headroom = 1.2\n");
  ASSERT_TRUE(c.ok()) << c.status();
  // 0.5 x 1 + 0.35 x 8 + 0.15 x 64 = 12.9 holders a block; chunks 0.35 x 1 + 0.15 x 9.
  EXPECT_EQ(c->workload.expected_pairs, 1'290'000u);
  EXPECT_EQ(c->workload.expected_chunks, 170'000u);
  EXPECT_EQ(c->geometry.blocks, 120'000u);
  EXPECT_EQ(c->geometry.pairs, 1'548'000u);
  EXPECT_GE(c->geometry.holder_chunks, 204'000u);
  EXPECT_EQ(c->geometry.engine_hashes, 120'000u);  // one per block: shared content hashes
  EXPECT_EQ(c->geometry.stripes, 64u);
  const std::string d = DescribeSizing(c->workload, c->geometry);
  EXPECT_NE(d.find("workload: 100000 blocks, 1290000 pairs (12.90 holders a block)"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("headroom 1.20x"), std::string::npos) << d;
  EXPECT_NE(d.find("bytes a pair at capacity"), std::string::npos) << d;
  auto p = Parse("workload_blocks = 1000\nworkload_private_hashes = true\nstripes = 8\n");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->geometry.engine_hashes, p->geometry.pairs);  // one per pair
  EXPECT_EQ(p->geometry.stripes, 8u);                       // given: kept
}

TEST(SizingTest, ConflictsAndBadValuesAreRefused) {
  for (const char* bad : {
           "workload_blocks = 1000\nblocks = 5\n",                      // two ways of sizing
           "workload_blocks = 1000\nengine_hashes = 5\n",               //
           "workload_holders = [[1, 1.0]]\n",                           // no workload_blocks
           "headroom = 1.5\n",                                          //
           "workload_blocks = 0\n",                                     //
           "workload_blocks = 10\nheadroom = 0.5\n",                    // below 1
           "workload_blocks = 10\nworkload_holders = [[1, 0.5]]\n",     // sums to 0.5
           "workload_blocks = 10\nworkload_holders = [[0, 1.0]]\n",     // no holders
           "workload_blocks = 10\nworkload_holders = [[2, 1.0, 3]]\n",  // not a pair
           "workload_blocks = 10\nworkload_holders = [\"x\"]\n",
       }) {
    EXPECT_FALSE(Parse(bad).ok()) << bad;
  }
}

// The headroom holds: every block of the described workload is stored, none evicted or
// refused, in a segment of exactly the size the description gives.
TEST(SizingTest, ASegmentSizedForAWorkloadHoldsIt) {
  Workload w;
  w.blocks = 60'000;
  w.holders = {{1, 0.5}, {8, 0.35}, {64, 0.15}};
  w.headroom = 1.05;
  index::Geometry g;
  g.publishers = 80;
  g.namespaces = 2;
  ASSERT_TRUE(ApplyWorkload(w, &g).ok());
  const std::string name = "kvidx-sizing-" + std::to_string(getpid());
  index::Segment::Remove(name);
  auto seg = index::Segment::Create(name, g);
  ASSERT_TRUE(seg.ok()) << seg.status();
  struct Unlink {
    std::string n;
    ~Unlink() { index::Segment::Remove(n); }
  } unlink{name};
  index::PrefixIndex idx(seg->get());
  const index::NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 1});
  std::vector<index::PublisherId> pubs;
  for (int p = 0; p < 64; ++p)
    pubs.push_back(*idx.RegisterPublisher({.pod = "p" + std::to_string(p), .ns = ns}));
  std::mt19937_64 rng(3);
  uint64_t stored = 0;
  for (uint64_t b = 0; b < w.blocks; ++b) {
    const uint32_t h = b < w.blocks / 2 ? 1 : b < w.blocks * 85 / 100 ? 8 : 64;
    std::vector<index::PublisherId> who = pubs;
    std::shuffle(who.begin(), who.end(), rng);
    const uint32_t token = static_cast<uint32_t>(b + 1);
    const uint64_t hash = b + 1;
    index::StoreRequest req;
    req.tokens = {&token, 1};
    req.engine_hashes = {&hash, 1};
    for (uint32_t k = 0; k < h; ++k) {
      auto r = idx.Store(who[k], req);
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->rejected, 0u) << "block " << b;
      stored += r->stored;
    }
  }
  const index::IndexStats s = idx.Stats();
  EXPECT_EQ(stored, w.expected_pairs);
  EXPECT_EQ(s.pairs, w.expected_pairs);
  EXPECT_EQ(s.blocks, w.blocks);
  EXPECT_EQ(s.evicted_blocks, 0u);
  EXPECT_EQ(s.engine_full, 0u);
}

}  // namespace
}  // namespace kvidx::config
