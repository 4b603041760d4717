#include "index/prefix_index.h"

#include <array>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/index/op_stream.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

using ::kvidx::testing::ScopedSegment;
using ::testing::ElementsAre;

std::vector<uint32_t> Tokens(uint32_t first, size_t n) {
  std::vector<uint32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

class PrefixIndexTest : public ::testing::Test {
 protected:
  PrefixIndexTest() : seg_("prefix") {}

  NamespaceId Ns(const std::string& model = "llama", const std::string& lora = "",
                 uint32_t block_size = 4) {
    NamespaceSpec spec;
    spec.model = model;
    spec.lora_name = lora;
    spec.block_size = block_size;
    auto ns = idx().RegisterNamespace(spec);
    EXPECT_TRUE(ns.ok()) << ns.status();
    return *ns;
  }
  PublisherId Pub(const std::string& pod, NamespaceId ns, uint32_t rank = 0) {
    PublisherSpec spec;
    spec.pod = pod;
    spec.dp_rank = rank;
    spec.ns = ns;
    auto p = idx().RegisterPublisher(spec);
    EXPECT_TRUE(p.ok()) << p.status();
    return *p;
  }
  // Stores blocks with engine hashes base, base+1, ... and tokens chunked by 4.
  StoreResult StoreTokens(PublisherId p, const std::vector<uint32_t>& tokens, uint64_t hash_base,
                          std::optional<uint64_t> parent = std::nullopt, Tier tier = kGpu) {
    std::vector<uint64_t> hashes(tokens.size() / 4);
    std::iota(hashes.begin(), hashes.end(), hash_base);
    StoreRequest req;
    req.tier = tier;
    req.parent_engine_hash = parent;
    req.engine_hashes = hashes;
    req.tokens = tokens;
    auto r = idx().Store(p, req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : StoreResult{};
  }
  uint32_t Matched(NamespaceId ns, const std::vector<uint32_t>& tokens, PublisherId p) {
    auto keys = idx().KeysForTokens(ns, tokens);
    EXPECT_TRUE(keys.ok());
    LookupResult r = idx().Lookup(*keys);
    for (const auto& m : r.matches) {
      if (m.publisher == p) return m.blocks;
    }
    return 0;
  }
  PrefixIndex& idx() { return seg_.index(); }
  const PublisherSlot& slot(PublisherId p) { return *idx().publisher_slot(p); }

  ScopedSegment seg_;
};

TEST_F(PrefixIndexTest, RegistrationIsIdempotentAndValidated) {
  NamespaceId a = Ns("m1");
  EXPECT_EQ(Ns("m1"), a);
  EXPECT_NE(Ns("m1", "lora-a"), a);
  EXPECT_EQ(idx().FindNamespace("m1", ""), a);
  EXPECT_FALSE(idx().FindNamespace("nope", "").has_value());
  EXPECT_TRUE(absl::IsInvalidArgument(idx().RegisterNamespace({.model = ""}).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(idx().RegisterNamespace({.model = "x", .block_size = 0}).status()));

  PublisherId p = Pub("pod-a", a);
  EXPECT_EQ(Pub("pod-a", a), p);
  EXPECT_NE(Pub("pod-a", a, 1), p);
  EXPECT_EQ(idx().FindPublisher("pod-a", 1), Pub("pod-a", a, 1));
  PublisherSpec bad;
  bad.pod = "pod-b";
  bad.ns = 7;  // not registered
  EXPECT_TRUE(absl::IsNotFound(idx().RegisterPublisher(bad).status()));
  bad.pod = "";
  bad.ns = a;
  EXPECT_TRUE(absl::IsInvalidArgument(idx().RegisterPublisher(bad).status()));
}

TEST_F(PrefixIndexTest, PublisherTableFullIsResourceExhausted) {
  NamespaceId ns = Ns();
  for (int i = 0; i < 64; ++i) Pub("pod-" + std::to_string(i), ns);
  PublisherSpec spec;
  spec.pod = "one-too-many";
  spec.ns = ns;
  EXPECT_TRUE(absl::IsResourceExhausted(idx().RegisterPublisher(spec).status()));
}

TEST_F(PrefixIndexTest, StoreThenLookupMatchesLeadingBlocks) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  PublisherId b = Pub("b", ns);
  std::vector<uint32_t> prompt = Tokens(100, 32);                                    // 8 blocks
  StoreTokens(a, std::vector<uint32_t>(prompt.begin(), prompt.begin() + 24), 1000);  // 6 blocks
  StoreTokens(b, std::vector<uint32_t>(prompt.begin(), prompt.begin() + 8), 1000);   // 2 blocks
  auto keys = idx().KeysForTokens(ns, prompt);
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 8u);
  LookupResult r = idx().Lookup(*keys);
  ASSERT_EQ(r.matches.size(), 2u);
  EXPECT_EQ(r.matches[0].publisher, a);
  EXPECT_EQ(r.matches[0].blocks, 6u);
  EXPECT_EQ(r.matches[0].tier_blocks[kGpu], 6u);
  EXPECT_EQ(r.matches[0].tier_blocks[kCpu], 0u);
  EXPECT_EQ(r.matches[1].publisher, b);
  EXPECT_EQ(r.matches[1].blocks, 2u);
  EXPECT_EQ(r.blocks_walked, 7u);  // stops at the first block nobody holds
  EXPECT_FALSE(r.degraded);

  // Candidates restrict; max_blocks caps.
  PublisherId only_b[] = {b};
  r = idx().Lookup(*keys, {.candidates = only_b});
  ASSERT_EQ(r.matches.size(), 1u);
  EXPECT_EQ(r.matches[0].publisher, b);
  r = idx().Lookup(*keys, {.max_blocks = 3});
  EXPECT_EQ(r.matches[0].blocks, 3u);

  // A different prompt that diverges in block 0 matches nothing.
  EXPECT_EQ(Matched(ns, Tokens(101, 32), a), 0u);
  // A prompt that diverges in block 3 matches 3.
  std::vector<uint32_t> diverge = prompt;
  diverge[13] = 7;
  EXPECT_EQ(Matched(ns, diverge, a), 3u);
  EXPECT_EQ(slot(a).index.stored_blocks, 6u);
  EXPECT_EQ(slot(a).index.pairs, 6u);
}

TEST_F(PrefixIndexTest, ParentHashChainsAcrossEvents) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  std::vector<uint32_t> prompt = Tokens(1, 16);
  StoreTokens(a, {prompt.begin(), prompt.begin() + 8}, 10);  // hashes 10, 11
  StoreTokens(a, {prompt.begin() + 8, prompt.end()}, 12, /*parent=*/11);
  EXPECT_EQ(Matched(ns, prompt, a), 4u);
}

TEST_F(PrefixIndexTest, UnknownParentIsAnOrphanAndStoresNothing) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  StoreResult r = StoreTokens(a, Tokens(1, 8), 10, /*parent=*/999);
  EXPECT_TRUE(r.orphan);
  EXPECT_EQ(r.stored, 0u);
  EXPECT_EQ(slot(a).index.orphan_blocks, 2u);
  EXPECT_EQ(idx().Stats().blocks, 0u);
  EXPECT_EQ(slot(a).index.applied_ops, 2u);  // counted as applied (no-ops) for sequence bookkeeping
}

TEST_F(PrefixIndexTest, DuplicateStoresAreReferenceCounted) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  std::vector<uint32_t> t = Tokens(5, 4);
  StoreTokens(a, t, 42);
  StoreResult r = StoreTokens(a, t, 42);
  EXPECT_EQ(r.duplicates, 1u);
  EXPECT_EQ(slot(a).index.duplicate_stores, 1u);
  EXPECT_EQ(slot(a).index.pairs, 1u);
  ASSERT_TRUE(idx().Remove(a, kGpu, 42).ok());
  EXPECT_EQ(Matched(ns, t, a), 1u);  // one reference left
  ASSERT_TRUE(idx().Remove(a, kGpu, 42).ok());
  EXPECT_EQ(Matched(ns, t, a), 0u);
  EXPECT_EQ(idx().Stats().blocks, 0u);
  EXPECT_EQ(slot(a).index.pairs, 0u);
}

TEST_F(PrefixIndexTest, RemoveOfUnknownHashIsNotFoundAndCounted) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  PublisherId b = Pub("b", ns);
  EXPECT_TRUE(absl::IsNotFound(idx().Remove(a, kGpu, 12345)));
  EXPECT_EQ(slot(a).index.unknown_removes, 1u);
  // Known hash, but `b` never stored it: also NOT_FOUND, and a's residency stays.
  StoreTokens(a, Tokens(1, 4), 77);
  EXPECT_TRUE(absl::IsNotFound(idx().Remove(b, kGpu, 77)));
  EXPECT_EQ(slot(b).index.unknown_removes, 1u);
  EXPECT_EQ(Matched(ns, Tokens(1, 4), a), 1u);
  // Known hash, wrong tier.
  EXPECT_TRUE(absl::IsNotFound(idx().Remove(a, kCpu, 77)));
  EXPECT_EQ(Matched(ns, Tokens(1, 4), a), 1u);
}

TEST_F(PrefixIndexTest, TokenlessStoresResolveThroughEngineHashes) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  std::vector<uint32_t> t = Tokens(1, 12);  // 3 blocks, hashes 500..502
  StoreTokens(a, t, 500);
  // CPU offload of the first two blocks: hashes only.
  std::vector<uint64_t> hashes = {500, 501};
  StoreRequest cpu;
  cpu.tier = kCpu;
  cpu.engine_hashes = hashes;
  auto r = idx().Store(a, cpu);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stored, 2u);
  auto keys = *idx().KeysForTokens(ns, t);
  LookupResult lr = idx().Lookup(keys);
  ASSERT_EQ(lr.matches.size(), 1u);
  EXPECT_EQ(lr.matches[0].blocks, 3u);
  EXPECT_EQ(lr.matches[0].tier_blocks[kGpu], 3u);
  EXPECT_EQ(lr.matches[0].tier_blocks[kCpu], 2u);
  // A GPU eviction of block 0 leaves the CPU copy: still 3 blocks in some tier... no: block 0
  // is then held only in CPU, so the GPU run is 0 and the any-tier run stays 3.
  ASSERT_TRUE(idx().Remove(a, kGpu, 500).ok());
  lr = idx().Lookup(keys);
  EXPECT_EQ(lr.matches[0].blocks, 3u);
  EXPECT_EQ(lr.matches[0].tier_blocks[kGpu], 0u);
  EXPECT_EQ(lr.matches[0].tier_blocks[kCpu], 2u);
  // Unknown engine hash without tokens: unresolved, counted, nothing stored.
  std::vector<uint64_t> unknown = {9999};
  cpu.engine_hashes = unknown;
  r = idx().Store(a, cpu);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->unresolved, 1u);
  EXPECT_EQ(slot(a).index.unresolved_blocks, 1u);
}

TEST_F(PrefixIndexTest, LoraNamespacesNeverMatchEachOther) {
  NamespaceId base = Ns("m");
  NamespaceId lora_a = Ns("m", "adapter-a");
  NamespaceId lora_b = Ns("m", "adapter-b");
  NamespaceId other_model = Ns("m2");
  PublisherId pa = Pub("a", lora_a);
  std::vector<uint32_t> t = Tokens(1, 16);
  StoreTokens(pa, t, 1);
  EXPECT_EQ(Matched(lora_a, t, pa), 4u);
  EXPECT_EQ(Matched(base, t, pa), 0u);
  EXPECT_EQ(Matched(lora_b, t, pa), 0u);
  EXPECT_EQ(Matched(other_model, t, pa), 0u);
  // The same engine hashes in another namespace do not resolve to a's blocks.
  PublisherId pb = Pub("b", base);
  EXPECT_TRUE(absl::IsNotFound(idx().Remove(pb, kGpu, 1)));
}

TEST_F(PrefixIndexTest, SharedEngineHashesResolveAcrossPublishersUnlessPrivate) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  PublisherId b = Pub("b", ns);
  StoreTokens(a, Tokens(1, 4), 700);
  // b sends a token-less CPU store of the same content hash: shared mapping resolves it.
  std::vector<uint64_t> h = {700};
  StoreRequest cpu;
  cpu.tier = kCpu;
  cpu.engine_hashes = h;
  ASSERT_EQ(idx().Store(b, cpu)->stored, 1u);
  // A publisher with private engine hashes does not see the shared mapping.
  PublisherSpec spec;
  spec.pod = "c";
  spec.ns = ns;
  spec.private_engine_hashes = true;
  PublisherId c = *idx().RegisterPublisher(spec);
  ASSERT_EQ(idx().Store(c, cpu)->unresolved, 1u);
}

TEST_F(PrefixIndexTest, ClearPublisherAndNamespaceAndUnregister) {
  NamespaceId ns = Ns();
  NamespaceId ns2 = Ns("other");
  PublisherId a = Pub("a", ns);
  PublisherId b = Pub("b", ns);
  PublisherId c = Pub("c", ns2);
  std::vector<uint32_t> t = Tokens(1, 16);
  StoreTokens(a, t, 1);
  StoreTokens(b, t, 1);
  StoreTokens(c, t, 1);
  ASSERT_TRUE(idx().ClearPublisher(a).ok());
  EXPECT_EQ(Matched(ns, t, a), 0u);
  EXPECT_EQ(Matched(ns, t, b), 4u);
  EXPECT_EQ(slot(a).index.pairs, 0u);
  EXPECT_EQ(slot(a).index.clears, 1u);
  auto dropped = idx().ClearNamespace(ns);
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(*dropped, 4u);
  EXPECT_EQ(Matched(ns, t, b), 0u);
  EXPECT_EQ(Matched(ns2, t, c), 4u);
  EXPECT_EQ(slot(b).index.pairs, 0u);
  ASSERT_TRUE(idx().UnregisterPublisher(c).ok());
  EXPECT_EQ(idx().publisher_slot(c), nullptr);
  EXPECT_EQ(idx().Stats().blocks, 0u);
  EXPECT_TRUE(absl::IsNotFound(idx().ClearPublisher(c)));
  EXPECT_TRUE(absl::IsNotFound(idx().ClearNamespace(7).status()));
}

TEST_F(PrefixIndexTest, UnknownPublisherIsNotFound) {
  Ns();
  std::vector<uint64_t> h = {1};
  StoreRequest req;
  req.engine_hashes = h;
  EXPECT_TRUE(absl::IsNotFound(idx().Store(33, req).status()));
  EXPECT_TRUE(absl::IsNotFound(idx().Remove(33, kGpu, 1)));
  EXPECT_TRUE(absl::IsNotFound(idx().StoreBlock(1000, kGpu, 1, 1)));
}

TEST_F(PrefixIndexTest, MalformedStoreIsInvalidArgument) {
  NamespaceId ns = Ns();
  PublisherId a = Pub("a", ns);
  std::vector<uint64_t> h = {1, 2};
  std::vector<uint32_t> t = Tokens(1, 7);  // not 2 x 4
  StoreRequest req;
  req.engine_hashes = h;
  req.tokens = t;
  EXPECT_TRUE(absl::IsInvalidArgument(idx().Store(a, req).status()));
  req.tier = static_cast<Tier>(9);
  req.tokens = {};
  EXPECT_TRUE(absl::IsInvalidArgument(idx().Store(a, req).status()));
  EXPECT_EQ(idx().Stats().blocks, 0u);
}

TEST(PrefixIndexCapacityTest, FullTableEvictsLeastRecentlyStoredAndKeepsServing) {
  index::Geometry g;
  g.blocks = 64;
  g.pairs = 64;
  g.publishers = 4;
  g.namespaces = 2;
  g.stripes = 1;
  ScopedSegment seg("evict", g);
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 1});
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  const uint64_t cap = idx.Stats().block_capacity;
  ASSERT_GE(cap, 64u);
  // Store cap + 10 single-token blocks, each its own sequence (no parent).
  for (uint32_t i = 0; i < cap + 10; ++i) {
    uint32_t tok = i;
    uint64_t h = 1000 + i;
    StoreRequest req;
    req.engine_hashes = {&h, 1};
    req.tokens = {&tok, 1};
    auto r = idx.Store(a, req);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->stored, 1u);
  }
  IndexStats s = idx.Stats();
  EXPECT_EQ(s.blocks, cap);
  EXPECT_EQ(s.evicted_blocks, 10u);
  EXPECT_EQ(idx.publisher_slot(a)->index.evicted_pairs, 10u);
  EXPECT_EQ(idx.publisher_slot(a)->index.pairs, cap);
  // The oldest ten are gone, the newest are there.
  auto held = [&](uint32_t tok) {
    auto keys = *idx.KeysForTokens(ns, std::span<const uint32_t>(&tok, 1));
    return !idx.Lookup(keys).matches.empty();
  };
  for (uint32_t i = 0; i < 10; ++i) EXPECT_FALSE(held(i)) << i;
  EXPECT_TRUE(held(10));
  EXPECT_TRUE(held(static_cast<uint32_t>(cap + 9)));
  // Re-storing block 10 makes it the most recent: the next eviction takes 11 instead.
  {
    uint32_t tok = 10;
    uint64_t h = 1010;
    StoreRequest req;
    req.engine_hashes = {&h, 1};
    req.tokens = {&tok, 1};
    ASSERT_TRUE(idx.Store(a, req).ok());
    tok = 100000;
    h = 99;
    ASSERT_TRUE(idx.Store(a, req).ok());
  }
  EXPECT_TRUE(held(10));
  EXPECT_FALSE(held(11));
}

// The engine-hash table fills up as blocks come and go: entries of evicted blocks are swept,
// and every block still held stays resolvable (its removal finds it).
TEST(PrefixIndexCapacityTest, EngineTableSweepsStaleEntriesAndKeepsLiveOnes) {
  index::Geometry g;
  g.blocks = 64;
  g.pairs = 64;
  g.engine_hashes = 96;
  g.publishers = 4;
  g.namespaces = 2;
  g.stripes = 1;
  ScopedSegment seg("sweep", g);
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 1});
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  const uint32_t n = 1000;
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t tok = i;
    uint64_t h = 5000 + i;
    StoreRequest req;
    req.engine_hashes = {&h, 1};
    req.tokens = {&tok, 1};
    ASSERT_TRUE(idx.Store(a, req).ok());
  }
  IndexStats st = idx.Stats();
  EXPECT_GT(st.engine_swept, 0u);
  EXPECT_EQ(st.engine_full, 0u);
  const uint64_t held = st.blocks;
  ASSERT_GT(held, 0u);
  // The newest `held` blocks are the ones still resident: each removal must resolve.
  for (uint32_t i = n - static_cast<uint32_t>(held); i < n; ++i) {
    ASSERT_TRUE(idx.Remove(a, kGpu, 5000 + i).ok()) << i;
  }
  EXPECT_EQ(idx.Stats().blocks, 0u);
  EXPECT_EQ(idx.publisher_slot(a)->index.unknown_removes, 0u);
}

TEST(PrefixIndexCapacityTest, QuotaEvictsThePublishersOwnOldest) {
  index::Geometry g;
  g.blocks = 256;
  g.pairs = 256;
  g.publishers = 4;
  g.namespaces = 2;
  g.stripes = 1;
  ScopedSegment seg("quota", g);
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 1});
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns, .quota_pairs = 8});
  PublisherId b = *idx.RegisterPublisher({.pod = "b", .ns = ns});
  auto store = [&](PublisherId p, uint32_t tok) {
    uint64_t h = tok;
    StoreRequest req;
    req.engine_hashes = {&h, 1};
    req.tokens = {&tok, 1};
    ASSERT_TRUE(idx.Store(p, req).ok());
  };
  store(b, 5000);  // b's block is older than all of a's
  for (uint32_t i = 0; i < 20; ++i) store(a, i);
  EXPECT_EQ(idx.publisher_slot(a)->index.pairs, 8u);
  EXPECT_EQ(idx.publisher_slot(a)->index.quota_evictions, 12u);
  EXPECT_EQ(idx.publisher_slot(b)->index.pairs, 1u);  // untouched by a's quota
}

TEST(PrefixIndexReadOnlyTest, ReadOnlyAttachmentServesLookupsAndRefusesWrites) {
  ScopedSegment seg("ro");
  NamespaceId ns = *seg.index().RegisterNamespace({.model = "m", .block_size = 2});
  PublisherId a = *seg.index().RegisterPublisher({.pod = "a", .ns = ns});
  std::vector<uint32_t> t = {1, 2, 3, 4};
  std::vector<uint64_t> h = {1, 2};
  StoreRequest req;
  req.engine_hashes = h;
  req.tokens = t;
  ASSERT_TRUE(seg.index().Store(a, req).ok());

  auto ro = Segment::Attach(seg.name(), Segment::Access::kReadOnly);
  ASSERT_TRUE(ro.ok()) << ro.status();
  PrefixIndex view(ro->get());
  EXPECT_TRUE(view.read_only());
  auto keys = *view.KeysForTokens(ns, t);
  LookupResult r = view.Lookup(keys);
  ASSERT_EQ(r.matches.size(), 1u);
  EXPECT_EQ(r.matches[0].blocks, 2u);
  EXPECT_TRUE(absl::IsFailedPrecondition(view.Store(a, req).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(view.Remove(a, kGpu, 1)));
  EXPECT_TRUE(absl::IsFailedPrecondition(view.ClearPublisher(a)));
  EXPECT_TRUE(absl::IsFailedPrecondition(view.RegisterNamespace({.model = "x"}).status()));
  EXPECT_EQ(view.RepairAbandonedStripes(), 0u);
}

TEST(PrefixIndexKvbmTest, EngineKeyedNamespaceNeedsNoTokens) {
  ScopedSegment seg("kvbm");
  PrefixIndex& idx = seg.index();
  NamespaceId ns =
      *idx.RegisterNamespace({.model = "kvbm-model", .block_size = 16, .key_by_engine_hash = true});
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  std::vector<uint64_t> h = {11, 22, 33};
  StoreRequest req;
  req.engine_hashes = h;
  auto r = idx.Store(a, req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stored, 3u);
  BlockKey root = idx.namespace_slot(ns)->root;
  std::vector<BlockKey> keys = {EngineHashKey(root, 11), EngineHashKey(root, 22),
                                EngineHashKey(root, 33)};
  EXPECT_EQ(idx.Lookup(keys).matches.at(0).blocks, 3u);
  ASSERT_TRUE(idx.Remove(a, kGpu, 22).ok());
  EXPECT_EQ(idx.Lookup(keys).matches.at(0).blocks, 1u);
}

// KVBM's sparse answer: a holder's depth is the deepest key it holds, whether or not it holds
// the shallower ones; candidates and max_blocks restrict it; tiers are kept apart.
TEST(PrefixIndexKvbmTest, DeepestAnswersTheDeepestHeldKeyPerHolder) {
  ScopedSegment seg("kvbm-deep");
  PrefixIndex& idx = seg.index();
  NamespaceId ns =
      *idx.RegisterNamespace({.model = "kvbm-model", .block_size = 16, .key_by_engine_hash = true});
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  PublisherId b = *idx.RegisterPublisher({.pod = "b", .ns = ns});
  PublisherId c = *idx.RegisterPublisher({.pod = "c", .ns = ns});
  auto store = [&](PublisherId p, std::vector<uint64_t> h, Tier tier = kGpu) {
    StoreRequest req;
    req.engine_hashes = h;
    req.tier = tier;
    ASSERT_TRUE(idx.Store(p, req).ok());
  };
  store(a, {16, 32, 64});
  store(b, {64});  // the shallower ones evicted: still holds 64 blocks
  store(c, {16});
  store(c, {32}, kCpu);
  const BlockKey root = idx.namespace_slot(ns)->root;
  std::vector<BlockKey> keys = {EngineHashKey(root, 16), EngineHashKey(root, 32),
                                EngineHashKey(root, 64), EngineHashKey(root, 128)};
  std::vector<uint32_t> depths = {17, 33, 65, 129};
  LookupResult r;
  idx.LookupDeepest(keys, depths, {}, r);
  ASSERT_EQ(r.matches.size(), 3u);
  EXPECT_EQ(r.matches[0].publisher, a);
  EXPECT_EQ(r.matches[0].blocks, 65u);
  EXPECT_EQ(r.matches[1].publisher, b);
  EXPECT_EQ(r.matches[1].blocks, 65u);
  EXPECT_EQ(r.matches[2].publisher, c);
  EXPECT_EQ(r.matches[2].blocks, 33u);
  EXPECT_EQ(r.matches[2].tier_blocks[kGpu], 17u);
  EXPECT_EQ(r.matches[2].tier_blocks[kCpu], 33u);
  EXPECT_EQ(r.blocks_walked, 4u);
  std::vector<PublisherId> only_c = {c};
  idx.LookupDeepest(keys, depths, {.candidates = only_c}, r);
  ASSERT_EQ(r.matches.size(), 1u);
  EXPECT_EQ(r.matches[0].publisher, c);
  std::vector<PublisherId> only_a = {a};  // the last call's candidate is not this one's
  idx.LookupDeepest(keys, depths, {.candidates = only_a}, r);
  ASSERT_EQ(r.matches.size(), 1u);
  EXPECT_EQ(r.matches[0].publisher, a);
  idx.LookupDeepest(keys, depths, {.max_blocks = 40}, r);
  ASSERT_EQ(r.matches.size(), 2u);  // b holds only the 65-deep key, which is not read
  EXPECT_EQ(r.matches[0].blocks, 33u);
  EXPECT_EQ(r.matches[1].blocks, 33u);
}

TEST(PrefixIndexStatsTest, ReportsExactMemoryAndOccupancy) {
  ScopedSegment seg("stats");
  PrefixIndex& idx = seg.index();
  IndexStats s = idx.Stats();
  EXPECT_EQ(s.segment_bytes, seg.segment()->size());
  EXPECT_GE(s.block_capacity, 4096u);
  EXPECT_GE(s.pair_capacity, 16384u);
  EXPECT_EQ(s.pairs, 0u);
  EXPECT_GT(s.bytes_per_pair_capacity, 8.0);
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 1});
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  PublisherId b = *idx.RegisterPublisher({.pod = "b", .ns = ns});
  uint32_t tok = 1;
  uint64_t h = 1;
  StoreRequest req;
  req.engine_hashes = {&h, 1};
  req.tokens = {&tok, 1};
  ASSERT_TRUE(idx.Store(a, req).ok());
  ASSERT_TRUE(idx.Store(b, req).ok());
  s = idx.Stats();
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.pairs, 2u);
  EXPECT_EQ(s.engine_entries, 1u);  // one shared content hash
  EXPECT_EQ(s.publishers, 2u);
  EXPECT_DOUBLE_EQ(s.bytes_per_live_pair, s.segment_bytes / 2.0);
}

// Many publishers on the same blocks: holders overflow into chunks, which are freed and reused
// as holders come and go. The index must equal the model after every step.
TEST(PrefixIndexManyHoldersTest, ManyPublishersPerBlockMatchTheModel) {
  ScopedSegment seg("many");
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = kvidx::testing::kBlockSize});
  BlockKey root = idx.namespace_slot(ns)->root;
  std::vector<PublisherId> pubs;
  for (int i = 0; i < 24; ++i) {
    pubs.push_back(*idx.RegisterPublisher({.pod = "p" + std::to_string(i), .ns = ns}));
  }
  kvidx::testing::Model model(root);
  std::vector<std::vector<kvidx::testing::Op>> streams;
  for (int i = 0; i < 24; ++i) streams.push_back(kvidx::testing::GenerateStream(100 + i, 600));
  for (size_t step = 0; step < 600; ++step) {
    for (int i = 0; i < 24; ++i) {
      absl::Status st = kvidx::testing::ApplyOp(idx, pubs[i], root, streams[i][step]);
      ASSERT_TRUE(st.ok() || absl::IsNotFound(st)) << st;
      model.Apply(pubs[i], streams[i][step]);
    }
    if (step % 100 == 99) {
      ASSERT_EQ(model.Diff(idx), "") << "at step " << step;
    }
  }
  // Lookups agree with the model's holders for block 0 of every prompt.
  for (uint32_t p = 0; p < kvidx::testing::kPrompts; ++p) {
    auto keys = kvidx::testing::KeysOf(root, p).keys;
    LookupResult r = idx.Lookup(keys);
    std::set<PublisherId> got;
    for (const auto& m : r.matches) got.insert(m.publisher);
    std::set<PublisherId> want;
    for (const auto& h : idx.Holders(keys[0])) want.insert(h.publisher);
    EXPECT_EQ(got, want) << "prompt " << p;
  }
  EXPECT_EQ(idx.Stats().pairs, model.size());
}

// Issue 9, defect 1: with per-pod engine hashes the engine table needs an entry per pair. When
// it is full, a store is refused and counted, never kept without the mapping its removal needs.
TEST(EngineTableTest, FullTableRefusesStoresInsteadOfLosingTheirRemovals) {
  Geometry g = kvidx::testing::SmallGeometry();
  g.engine_hashes = 64;  // far fewer than the pairs below
  kvidx::testing::ScopedSegment seg("engine-full", g);
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 2});
  std::vector<PublisherId> pods;
  for (int i = 0; i < 4; ++i) {
    pods.push_back(*idx.RegisterPublisher(
        {.pod = "p" + std::to_string(i), .ns = ns, .private_engine_hashes = true}));
  }
  uint64_t refused = 0;
  for (uint32_t blk = 0; blk < 100; ++blk) {
    for (size_t i = 0; i < pods.size(); ++i) {
      StoreRequest req;
      req.ns = ns;
      std::vector<uint64_t> hashes = {uint64_t{blk} * 1000 + i};  // each pod its own hash
      std::vector<uint32_t> tokens = {blk, blk + 1};
      req.engine_hashes = hashes;
      req.tokens = tokens;
      auto r = idx.Store(pods[i], req);
      ASSERT_TRUE(r.ok()) << r.status();
      refused += r->rejected;
    }
  }
  EXPECT_GT(refused, 0u);
  uint64_t counted = 0;
  for (PublisherId p : pods) counted += idx.publisher_slot(p)->index.engine_table_full;
  EXPECT_EQ(counted, refused);
  EXPECT_LE(idx.Stats().engine_entries, idx.Stats().engine_capacity);
  // Every residency kept can be removed by its engine hash: nothing outlives the engine.
  for (uint32_t blk = 0; blk < 100; ++blk) {
    for (size_t i = 0; i < pods.size(); ++i)
      (void)idx.Remove(pods[i], kGpu, uint64_t{blk} * 1000 + i);
  }
  EXPECT_EQ(idx.Dump().size(), 0u) << "residencies whose removal could not be resolved";
  for (PublisherId p : pods) EXPECT_EQ(idx.publisher_slot(p)->index.pairs, 0u);
}

TEST(EngineTableTest, DefaultSizeCoversOneEntryPerPair) {
  Geometry g = kvidx::testing::SmallGeometry();
  kvidx::testing::ScopedSegment seg("engine-size", g);
  EXPECT_GE(seg.index().Stats().engine_capacity, g.pairs);
}

// Issue 9, defect 5: an unchained page hash (SGLang) stored by two pods at different positions
// used to flip the shared mapping, so the first pod's removal and its children resolved to the
// second pod's block.
TEST(EngineTableTest, AMappingNeverChangesWhatALiveEntryMeans) {
  kvidx::testing::ScopedSegment seg("engine-conflict");
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 2});
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  PublisherId b = *idx.RegisterPublisher({.pod = "b", .ns = ns});
  auto store = [&](PublisherId p, std::vector<uint64_t> hashes, std::vector<uint32_t> tokens,
                   std::optional<uint64_t> parent) {
    StoreRequest req;
    req.ns = ns;
    req.engine_hashes = hashes;
    req.tokens = tokens;
    req.parent_engine_hash = parent;
    ASSERT_TRUE(idx.Store(p, req).ok());
  };
  const uint64_t page = 500;  // the same page content, hashed without its prefix
  store(a, {10, page}, {1, 2, 7, 7}, std::nullopt);  // a: [1 2][7 7]
  store(b, {20, page}, {3, 4, 7, 7}, std::nullopt);  // b: [3 4][7 7], another key for page
  auto key_a = idx.KeysForTokens(ns, std::vector<uint32_t>{1, 2, 7, 7})->at(1);
  auto key_b = idx.KeysForTokens(ns, std::vector<uint32_t>{3, 4, 7, 7})->at(1);
  ASSERT_NE(key_a, key_b);
  EXPECT_EQ(idx.ResolveEngineHash(ns, a, page), key_a);
  EXPECT_EQ(idx.ResolveEngineHash(ns, b, page), key_b);
  EXPECT_EQ(idx.publisher_slot(b)->index.engine_hash_conflicts, 1u);
  // a's child of page chains under a's block.
  store(a, {11}, {8, 8}, page);
  EXPECT_EQ(idx.Lookup(*idx.KeysForTokens(ns, std::vector<uint32_t>{1, 2, 7, 7, 8, 8}))
                .matches.at(0)
                .blocks,
            3u);
  // Each pod's removal of page removes its own block.
  EXPECT_TRUE(idx.Remove(a, kGpu, page).ok());
  EXPECT_TRUE(idx.Holders(key_a).empty());
  ASSERT_EQ(idx.Holders(key_b).size(), 1u);
  EXPECT_TRUE(idx.Remove(b, kGpu, page).ok());
  EXPECT_TRUE(idx.Holders(key_b).empty());
  EXPECT_EQ(idx.publisher_slot(a)->index.unknown_removes, 0u);
  EXPECT_EQ(idx.publisher_slot(b)->index.unknown_removes, 0u);
}

// Issue 9, defect 7 (second half): a long clear keeps the worker's watchdog fed.
TEST(ClearTest, ClearNamespaceReportsProgress) {
  kvidx::testing::ScopedSegment seg("clear-progress");
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 2});
  int calls = 0;
  ASSERT_TRUE(idx.ClearNamespace(ns, [&] { ++calls; }).ok());
  EXPECT_EQ(calls,
            static_cast<int>(idx.header()->geometry.stripes / PrefixIndex::kProgressStripes));
}

}  // namespace
}  // namespace kvidx::index

namespace kvidx::index {
namespace {

// Lookup against a brute-force model built from Holders() per key, over seeded random schedules
// in which pods hold prefixes in several tiers and lose interior blocks: consecutive blocks then
// differ by one (publisher, tier), by several, or not at all, which exercises every path of the
// walk (full read, same set, one toggle), with and without a candidate filter and max_blocks.
TEST(PrefixIndexLookupModelTest, RandomTiersAndHolesMatchBruteForce) {
  constexpr int kPods = 20, kBlocks = 24;
  for (uint64_t seed = 1; seed <= 150; ++seed) {
    ScopedSegment seg("lookup-model");
    PrefixIndex& idx = seg.index();
    std::mt19937_64 rng(seed);
    NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = 4});
    std::vector<PublisherId> pubs;
    for (int p = 0; p < kPods; ++p) {
      pubs.push_back(*idx.RegisterPublisher({.pod = "p" + std::to_string(p), .ns = ns}));
    }
    std::vector<uint32_t> tokens(kBlocks * 4);
    std::iota(tokens.begin(), tokens.end(), static_cast<uint32_t>(seed * 1000));
    std::vector<uint64_t> hashes(kBlocks);
    std::iota(hashes.begin(), hashes.end(), seed * 100000);
    for (int p = 0; p < kPods; ++p) {
      for (Tier t : {kGpu, kCpu, kDisk}) {
        if (rng() % 3 == 0) continue;
        size_t n = 1 + rng() % kBlocks;
        StoreRequest req;
        req.tier = t;
        req.engine_hashes = {hashes.data(), n};
        req.tokens = {tokens.data(), n * 4};
        ASSERT_TRUE(idx.Store(pubs[p], req).ok());
        int holes = static_cast<int>(rng() % 3);
        for (int k = 0; k < holes; ++k) (void)idx.Remove(pubs[p], t, hashes[rng() % n]);
      }
    }
    auto keys = idx.KeysForTokens(ns, tokens);
    ASSERT_TRUE(keys.ok());
    // held[k][p] = tiers of pod p on block k.
    std::vector<std::vector<uint8_t>> held(kBlocks, std::vector<uint8_t>(65536, 0));
    for (int k = 0; k < kBlocks; ++k) {
      for (const Holder& h : idx.Holders((*keys)[k])) held[k][h.publisher] |= 1u << h.tier;
    }
    for (int trial = 0; trial < 6; ++trial) {
      LookupOptions o;
      std::vector<PublisherId> cands;
      if (trial % 2 == 1) {
        for (PublisherId p : pubs) {
          if (rng() % 2) cands.push_back(p);
        }
        o.candidates = cands;
      }
      if (trial >= 4) o.max_blocks = static_cast<uint32_t>(1 + rng() % kBlocks);
      size_t n = o.max_blocks != 0 ? o.max_blocks : kBlocks;
      std::map<PublisherId, std::array<uint32_t, 4>> want;  // any tier, gpu, cpu, disk
      for (PublisherId p : pubs) {
        if (!cands.empty() && std::find(cands.begin(), cands.end(), p) == cands.end()) continue;
        if (held[0][p] == 0) continue;
        std::array<uint32_t, 4> w{0, 0, 0, 0};
        bool any = true, tier[3] = {true, true, true};
        for (size_t k = 0; k < n; ++k) {
          any = any && held[k][p] != 0;
          w[0] += any;
          for (int t = 0; t < 3; ++t) {
            tier[t] = tier[t] && (held[k][p] >> t & 1u);
            w[1 + t] += tier[t];
          }
        }
        want[p] = w;
      }
      LookupResult r;
      idx.LookupInto(*keys, o, r);
      std::map<PublisherId, std::array<uint32_t, 4>> got;
      for (const PublisherMatch& m : r.matches) {
        got[m.publisher] = {m.blocks, m.tier_blocks[0], m.tier_blocks[1], m.tier_blocks[2]};
      }
      ASSERT_EQ(got, want) << "seed " << seed << " trial " << trial;
    }
  }
}

}  // namespace
}  // namespace kvidx::index
