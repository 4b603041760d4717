#include "index/block_key.h"

#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvidx::index {
namespace {

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016lx", static_cast<unsigned long>(v));
  return buf;
}

std::string Join(const std::vector<BlockKey>& keys) {
  std::string out;
  for (BlockKey k : keys) out += (out.empty() ? "" : " ") + Hex(k);
  return out;
}

// The vectors published in docs/block-keys.md.
std::map<std::string, std::string> ComputeVectors() {
  std::map<std::string, std::string> v;
  BlockKey r = NamespaceRoot("meta-llama/Llama-3.1-8B-Instruct", "");
  v["root_llama"] = Hex(r);
  v["root_llama_lora"] = Hex(NamespaceRoot("meta-llama/Llama-3.1-8B-Instruct", "sql-adapter"));
  std::vector<uint32_t> t32;
  for (uint32_t i = 1; i <= 32; ++i) t32.push_back(i);
  v["chain_1_32_bs16"] = Join(ChainBlockKeys(r, t32, 16));
  std::vector<uint32_t> wide = {0, 1, 127, 128, 65535, 65536, 151643, 4294967294u};
  v["chain_wide_bs4"] = Join(ChainBlockKeys(r, wide, 4));
  std::vector<uint32_t> t4 = {5, 6, 7, 8};
  const uint8_t salt[] = {0x91, 0xa4, 's', 'a', 'l', 't'};
  BlockKey k0 = ChainBlockKey(r, std::span(t4).first(2), salt);
  BlockKey k1 = ChainBlockKey(k0, std::span(t4).subspan(2, 2));
  v["chain_extra_bs2"] = Join({k0, k1});
  v["engine_key"] = Hex(EngineHashKey(r, 0xF0E1D2C3B4A59687ULL));
  return v;
}

TEST(BlockKeyTest, CacheSaltExtraIsMsgpackOfTheOneElementArray) {
  EXPECT_EQ(CacheSaltExtra("salt"), (std::vector<uint8_t>{0x91, 0xa4, 's', 'a', 'l', 't'}));
  // The header grows with the salt as msgpack's str does: fixstr, str8, str16, str32.
  for (auto [len, head] : std::vector<std::pair<size_t, std::vector<uint8_t>>>{
           {31, {0x91, 0xbf}},
           {32, {0x91, 0xd9, 32}},
           {255, {0x91, 0xd9, 255}},
           {256, {0x91, 0xda, 1, 0}},
           {70000, {0x91, 0xdb, 0, 1, 0x11, 0x70}}}) {
    std::vector<uint8_t> e = CacheSaltExtra(std::string(len, 'z'));
    ASSERT_EQ(e.size(), head.size() + len);
    EXPECT_TRUE(std::equal(head.begin(), head.end(), e.begin())) << len;
  }
  // The salted chain of the published vector, through the per-block-extra ChainBlockKeys.
  BlockKey r = NamespaceRoot("meta-llama/Llama-3.1-8B-Instruct", "");
  std::vector<uint8_t> salt = CacheSaltExtra("salt");
  std::vector<std::span<const uint8_t>> extra = {salt};
  std::vector<uint32_t> t4 = {5, 6, 7, 8};
  EXPECT_EQ(Join(ChainBlockKeys(r, t4, 2, extra)), "24b3528c650a7de5 cf8ca95b86568160");
  EXPECT_EQ(ChainBlockKeys(r, t4, 2, {}), ChainBlockKeys(r, t4, 2));
}

TEST(BlockKeyTest, PublishedVectors) {
  auto v = ComputeVectors();
  EXPECT_EQ(v["root_llama"], "ab5b1430f54d8243");
  EXPECT_EQ(v["root_llama_lora"], "51b697afe88768b7");
  EXPECT_EQ(v["chain_1_32_bs16"], "417e12445e3b44a6 a8a560f71a8c8135");
  EXPECT_EQ(v["chain_wide_bs4"], "f7ba421cfc9ba62e cd31ef91e7bcd6be");
  EXPECT_EQ(v["chain_extra_bs2"], "24b3528c650a7de5 cf8ca95b86568160");
  EXPECT_EQ(v["engine_key"], "76b4f0503ad7ac9c");
}

// The vectors again, from an independent Python implementation of the spec.
TEST(BlockKeyTest, AgreesWithIndependentPythonImplementation) {
  std::string cmd =
      std::string("/usr/bin/python3 ") + KVIDX_SOURCE_ROOT + "/tests/index/block_key_vectors.py";
  FILE* f = popen(cmd.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), f) != nullptr) out += buf;
  ASSERT_EQ(pclose(f), 0) << "python3-xxhash missing? output: " << out;
  auto v = ComputeVectors();
  std::istringstream lines(out);
  std::string line;
  int checked = 0;
  while (std::getline(lines, line)) {
    auto sp = line.find(' ');
    ASSERT_NE(sp, std::string::npos);
    EXPECT_EQ(v[line.substr(0, sp)], line.substr(sp + 1)) << line;
    ++checked;
  }
  EXPECT_EQ(checked, 6);
}

TEST(BlockKeyTest, ChainingPropertiesHold) {
  BlockKey r = NamespaceRoot("m", "");
  std::vector<uint32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto keys = ChainBlockKeys(r, a, 4);
  ASSERT_EQ(keys.size(), 2u);  // the partial third block is not keyed
  // Same second block after a different first block: different key (it is chained).
  std::vector<uint32_t> b = {9, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_NE(ChainBlockKeys(r, b, 4)[1], keys[1]);
  // Extra keys change the key; an empty extra does not.
  const uint8_t x[] = {1};
  EXPECT_NE(ChainBlockKey(r, std::span(a).first(4), x), keys[0]);
  EXPECT_EQ(ChainBlockKey(r, std::span(a).first(4), {}), keys[0]);
  EXPECT_TRUE(ChainBlockKeys(r, a, 0).empty());
  EXPECT_NE(NamespaceRoot("m", ""), NamespaceRoot("m", "l"));
  EXPECT_NE(NamespaceRoot("ab", ""), NamespaceRoot("a", "b"));  // the separator matters
}

}  // namespace
}  // namespace kvidx::index
