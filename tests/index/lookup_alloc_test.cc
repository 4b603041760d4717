// A lookup through LookupInto with a reused result allocates nothing once warm (issue 15: no
// allocation per lookup), and answers exactly as Lookup does. This binary replaces the global
// operator new to count allocations, so it is a test executable of its own.
#include <atomic>
#include <cstdlib>
#include <new>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"

#include "index/prefix_index.h"
#include "tests/index/test_util.h"

namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

// GCC cannot see that these replacements pair malloc with free, and warns at the frees.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace kvidx::index {
namespace {

using ::kvidx::testing::ScopedSegment;

TEST(LookupAllocTest, ReusedResultAllocatesNothingAndMatchesLookup) {
  ScopedSegment seg("lookup-alloc");
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 4});
  std::vector<PublisherId> pubs;
  for (int p = 0; p < 40; ++p) {
    pubs.push_back(*idx.RegisterPublisher({.pod = "pod-" + std::to_string(p), .ns = ns}));
  }
  // A 12-block prompt: every pod holds a prefix of it, pod p the first 1 + p % 12 blocks, some in
  // two tiers, so holder sets change along the walk and spill into chunks.
  std::vector<uint32_t> tokens(48);
  std::iota(tokens.begin(), tokens.end(), 1000);
  std::vector<uint64_t> hashes(12);
  std::iota(hashes.begin(), hashes.end(), 1);
  for (size_t p = 0; p < pubs.size(); ++p) {
    size_t n = 1 + p % 12;
    for (Tier t : {kGpu, kCpu}) {
      if (t == kCpu && p % 3 != 0) continue;
      StoreRequest req;
      req.tier = t;
      req.engine_hashes = {hashes.data(), n};
      req.tokens = {tokens.data(), n * 4};
      ASSERT_TRUE(idx.Store(pubs[p], req).ok());
    }
  }
  auto keys = idx.KeysForTokens(ns, tokens);
  ASSERT_TRUE(keys.ok());
  std::vector<BlockKey> miss = {0x1234, 0x5678};
  std::vector<PublisherId> some = {pubs[3], pubs[11], pubs[30]};
  LookupOptions filtered{.candidates = some, .max_blocks = 7};

  LookupResult out;
  idx.LookupInto(*keys, {}, out);  // warm: the thread's scratch and `out` grow here
  idx.LookupInto(*keys, filtered, out);
  uint64_t before = g_allocations.load();
  size_t matched = 0;
  for (int i = 0; i < 1000; ++i) {
    idx.LookupInto(*keys, {}, out);
    matched += out.matches.size();
    idx.LookupInto(miss, {}, out);
    matched += out.matches.size();
    idx.LookupInto(*keys, filtered, out);
    matched += out.matches.size();
  }
  uint64_t allocations = g_allocations.load() - before;
  EXPECT_EQ(allocations, 0u) << "LookupInto allocated";
  EXPECT_EQ(matched, 1000u * (40 + 0 + 3));

  // The same answers as Lookup, field by field, and every field reset between calls.
  for (const LookupOptions& o : {LookupOptions{}, filtered}) {
    LookupResult a = idx.Lookup(*keys, o);
    idx.LookupInto(miss, {}, out);
    EXPECT_TRUE(out.matches.empty());
    EXPECT_EQ(out.blocks_walked, 1u);
    idx.LookupInto(*keys, o, out);
    ASSERT_EQ(a.matches.size(), out.matches.size());
    EXPECT_EQ(a.blocks_walked, out.blocks_walked);
    EXPECT_EQ(a.degraded, out.degraded);
    for (size_t i = 0; i < a.matches.size(); ++i) {
      EXPECT_EQ(a.matches[i].publisher, out.matches[i].publisher);
      EXPECT_EQ(a.matches[i].blocks, out.matches[i].blocks);
      for (int t = 0; t < kNumTiers; ++t) {
        EXPECT_EQ(a.matches[i].tier_blocks[t], out.matches[i].tier_blocks[t]);
      }
    }
  }
  // pod-11 holds all 12 blocks; max_blocks 7 caps it.
  idx.LookupInto(*keys, filtered, out);
  ASSERT_FALSE(out.matches.empty());
  EXPECT_EQ(out.matches[0].publisher, pubs[11]);
  EXPECT_EQ(out.matches[0].blocks, 7u);
}

}  // namespace
}  // namespace kvidx::index
