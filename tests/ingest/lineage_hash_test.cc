// wire/lineage_hash.h: KVBM's positional lineage hash, both forms, and what kvidx keys by.
#include "wire/lineage_hash.h"

#include <gtest/gtest.h>

#include <random>

namespace kvidx::wire {
namespace {

TEST(LineageHashTest, UnpacksEachModeMostSignificantBitsFirst) {
  // Mode 0: 8-bit position 5, 59-bit parent 3, 59-bit current 9.
  __extension__ typedef unsigned __int128 u128;
  u128 v = (u128{5} << 118) | (u128{3} << 59) | 9;
  auto h = UnpackLineageHash(static_cast<uint64_t>(v >> 64), static_cast<uint64_t>(v));
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->position, 5u);
  EXPECT_EQ(h->parent, 3u);
  EXPECT_EQ(h->current, 9u);
  // Mode 1: 16-bit position 300, 55-bit fragments.
  v = (u128{1} << 126) | (u128{300} << 110) | (u128{(1ull << 55) - 1} << 55) | 1;
  h = UnpackLineageHash(static_cast<uint64_t>(v >> 64), static_cast<uint64_t>(v));
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->position, 300u);
  EXPECT_EQ(h->parent, (1ull << 55) - 1);
  EXPECT_EQ(h->current, 1u);
  // Mode 2: 24-bit position 70000, 51-bit fragments.
  v = (u128{2} << 126) | (u128{70000} << 102) | (u128{77} << 51) | 88;
  h = UnpackLineageHash(static_cast<uint64_t>(v >> 64), static_cast<uint64_t>(v));
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->position, 70000u);
  EXPECT_EQ(h->parent, 77u);
  EXPECT_EQ(h->current, 88u);
  // Mode 3 is not defined.
  EXPECT_FALSE(UnpackLineageHash(3ull << 62, 0).has_value());
}

TEST(LineageHashTest, BothFormsOfOneHashNameOneBlock) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const uint32_t pos = static_cast<uint32_t>(rng() % (kMaxLineagePosition + 1)) >> (rng() % 24);
    const uint64_t cur = rng(), par = rng();
    auto canon = CanonicalLineageHash(cur, par, pos);
    ASSERT_TRUE(canon.has_value());
    auto packed = PackLineageHash(*canon);
    ASSERT_TRUE(packed.has_value());
    auto back = UnpackLineageHash(packed->first, packed->second);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(back->position, pos);
    EXPECT_EQ(back->parent, canon->parent);
    EXPECT_EQ(back->current, canon->current);
    EXPECT_EQ(LineageEngineHash(*back), LineageEngineHash(*canon));
  }
  EXPECT_FALSE(CanonicalLineageHash(1, 2, kMaxLineagePosition + 1).has_value());
}

TEST(LineageHashTest, PositionAndParentAreTheBlocksIdentity) {
  const LineageHash a{16, 1, 42};
  EXPECT_NE(LineageEngineHash(a), LineageEngineHash({32, 1, 42}));  // same content, deeper
  EXPECT_NE(LineageEngineHash(a), LineageEngineHash({16, 2, 42}));  // another parent
  EXPECT_NE(LineageEngineHash(a), LineageEngineHash({16, 1, 43}));
  EXPECT_EQ(LineageEngineHash(a), LineageEngineHash({16, 1, 42}));
}

TEST(LineageHashTest, DecimalOfU128) {
  EXPECT_EQ(U128Decimal(0, 0), "0");
  EXPECT_EQ(U128Decimal(0, 12345), "12345");
  EXPECT_EQ(U128Decimal(~0ull, ~0ull), "340282366920938463463374607431768211455");
  EXPECT_EQ(U128Decimal(1, 0), "18446744073709551616");
}

}  // namespace
}  // namespace kvidx::wire
