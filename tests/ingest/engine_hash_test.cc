// The engine-hash cross-check: vLLM's sha256_cbor block hashing against the vectors in
// ../shared/spec/wire.md §3, and the checker's sampling, chaining and counting.
#include "ingest/engine_hash.h"

#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace kvidx::ingest {
namespace {

std::string Hex(const Sha256Digest& d) {
  std::string s;
  char b[3];
  for (uint8_t x : d) {
    std::snprintf(b, sizeof b, "%02x", x);
    s += b;
  }
  return s;
}

std::vector<uint32_t> OneTo32() {
  std::vector<uint32_t> t;
  for (uint32_t i = 1; i <= 32; ++i) t.push_back(i);
  return t;
}

TEST(VllmSha256CborTest, PublishedVectors) {
  const auto t = OneTo32();
  struct Vector {
    const char* seed;
    const char* none_head;
    const char* none_tail;
    uint64_t block0, block1;
  };
  for (const Vector& v :
       {Vector{"vllm-none-hash", "9bd96a48", "9581eef0", 0x7b0bf7bf7fd01682ULL,
               0x0b368b33d87bf3bfULL},
        Vector{"0", "4e1195df", "f2e61c3e", 0x2ceabcfae6d332eaULL, 0x26470bbec927f5bfULL}}) {
    const Sha256Digest none = VllmNoneHash(v.seed);
    EXPECT_EQ(Hex(none).substr(0, 8), v.none_head) << v.seed;
    EXPECT_EQ(Hex(none).substr(56), v.none_tail) << v.seed;
    const Sha256Digest d0 = VllmBlockDigest(none, std::span(t).first(16));
    const Sha256Digest d1 = VllmBlockDigest(d0, std::span(t).subspan(16, 16));
    EXPECT_EQ(VllmEventInt(d0), v.block0) << v.seed;
    EXPECT_EQ(VllmEventInt(d1), v.block1) << v.seed;
  }
  // The full seed-"0" NONE_HASH the spec prints.
  EXPECT_EQ(Hex(VllmNoneHash("0")),
            "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e");
}

Event Stored(std::vector<uint64_t> hashes, std::vector<uint32_t> tokens, uint32_t bs,
             std::optional<uint64_t> parent = std::nullopt) {
  Event e;
  e.hashes = std::move(hashes);
  e.tokens = std::move(tokens);
  e.block_size = bs;
  e.parent = parent;
  return e;
}

TEST(EngineHashCheckerTest, CountsMatchesAndMismatchesAndFollowsChains) {
  EngineHashChecker checker({{"m", HashCheckConfig{"0", 1}}});
  index::PublisherIngestState s{};
  const auto t = OneTo32();
  const Sha256Digest none = VllmNoneHash("0");
  const uint64_t h0 = VllmEventInt(VllmBlockDigest(none, std::span(t).first(16)));
  const uint64_t h1 = VllmEventInt(
      VllmBlockDigest(VllmBlockDigest(none, std::span(t).first(16)), std::span(t).subspan(16, 16)));
  // A right prompt start, then its continuation (checked through the remembered digest).
  checker.Observe(1, "m", Stored({h0}, {t.begin(), t.begin() + 16}, 16), &s);
  EXPECT_EQ(s.hash_checks, 1u);
  checker.Observe(1, "m", Stored({h1}, {t.begin() + 16, t.end()}, 16, h0), &s);
  EXPECT_EQ(s.hash_checks, 2u);
  EXPECT_EQ(s.hash_mismatches, 0u);
  // Another model, an unknown parent, extra keys, a LoRA name: not checkable, not counted.
  checker.Observe(1, "other", Stored({h0}, {t.begin(), t.begin() + 16}, 16), &s);
  checker.Observe(1, "m", Stored({h1}, {t.begin() + 16, t.end()}, 16, 12345), &s);
  Event salted = Stored({h0}, {t.begin(), t.begin() + 16}, 16);
  salted.cache_salt = "x";
  checker.Observe(1, "m", salted, &s);
  Event lora = Stored({h0}, {t.begin(), t.begin() + 16}, 16);
  lora.lora_name = "sql";
  checker.Observe(1, "m", lora, &s);
  EXPECT_EQ(s.hash_checks, 2u);
  // The same tokens hashed as 8-token blocks (a wrong block size): a mismatch, and the check
  // stops at the first bad block of the event.
  checker.Observe(1, "m", Stored({h0, h1, 7, 8}, t, 8), &s);
  EXPECT_EQ(s.hash_checks, 3u);
  EXPECT_EQ(s.hash_mismatches, 1u);
  EXPECT_EQ(s.last_hash_mismatch, h0);
  // Forgotten digests: the continuation is no longer checkable.
  checker.Forget(1);
  checker.Observe(1, "m", Stored({h1}, {t.begin() + 16, t.end()}, 16, h0), &s);
  EXPECT_EQ(s.hash_checks, 3u);
}

TEST(EngineHashCheckerTest, SamplesOnePromptStartInEvery) {
  EngineHashChecker checker({{"m", HashCheckConfig{"vllm-none-hash", 4}}});
  index::PublisherIngestState s{};
  const auto t = OneTo32();
  for (int i = 0; i < 12; ++i)
    checker.Observe(2, "m", Stored({1}, {t.begin(), t.begin() + 16}, 16), &s);
  EXPECT_EQ(s.hash_checks, 3u);
  EXPECT_EQ(s.hash_mismatches, 3u);  // 1 is not that block's hash
}

}  // namespace
}  // namespace kvidx::ingest
