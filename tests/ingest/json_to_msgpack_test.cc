// JsonToMsgpack: every JSON form it accepts becomes the msgpack a msgpack encoder writes for the
// same value, and every malformed document is refused with its reason.
#include "ingest/json_to_msgpack.h"

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include <msgpack.hpp>

namespace kvidx::ingest {
namespace {

struct Result {
  bool ok = false;
  std::vector<uint8_t> out;
  std::string error;
};

Result Convert(const std::string& json, int max_depth = 16) {
  Result r;
  r.ok = JsonToMsgpack(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(json.data()), json.size()), &r.out,
      &r.error, max_depth);
  return r;
}

// The msgpack of `v`, as msgpack-c writes it.
template <typename T>
std::vector<uint8_t> Packed(const T& v) {
  msgpack::sbuffer b;
  msgpack::pack(b, v);
  std::vector<uint8_t> out(b.size());
  std::memcpy(out.data(), b.data(), b.size());
  return out;
}

TEST(JsonToMsgpackTest, ScalarsBecomeTheirMsgpackForms) {
  EXPECT_EQ(Convert("true").out, Packed(true));
  EXPECT_EQ(Convert(" false ").out, Packed(false));
  EXPECT_EQ(Convert("null").out, Packed(msgpack::type::nil_t()));
  EXPECT_EQ(Convert("0").out, Packed(uint64_t{0}));
  EXPECT_EQ(Convert("18446744073709551615").out, Packed(uint64_t{18446744073709551615ull}));
  EXPECT_EQ(Convert("-1").out, Packed(int64_t{-1}));
  EXPECT_EQ(Convert("-9223372036854775808").out, Packed(INT64_MIN));
  EXPECT_EQ(Convert("\"text\"").out, Packed(std::string("text")));
}

TEST(JsonToMsgpackTest, IntegersOver64BitsAreA16ByteBigEndianBin) {
  // 2^64 + 5 and the largest u128.
  Result r = Convert("18446744073709551621");
  ASSERT_TRUE(r.ok) << r.error;
  std::vector<uint8_t> want{0xc4, 16, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5};
  EXPECT_EQ(r.out, want);
  r = Convert("340282366920938463463374607431768211455");
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.out.size(), 18u);
  for (size_t i = 2; i < 18; ++i) EXPECT_EQ(r.out[i], 0xff);
  EXPECT_EQ(Convert("340282366920938463463374607431768211456").error, "integer over 128 bits");
  EXPECT_EQ(Convert("-9223372036854775809").error, "negative integer under -2^63");
}

TEST(JsonToMsgpackTest, StringEscapesDecodeToUtf8) {
  Result r = Convert(R"("q\" b\\ s\/ \b\f\n\r\t A\u0041 e\u00e9 \u20AC")");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out, Packed(std::string("q\" b\\ s/ \b\f\n\r\t AA e\xc3\xa9 \xe2\x82\xac")));
}

TEST(JsonToMsgpackTest, ContainersKeepOrderAndNesting) {
  Result r = Convert(R"( { "a" : [1, -2, "x", [] , {}], "b": {"c": null} } )");
  ASSERT_TRUE(r.ok) << r.error;
  msgpack::sbuffer b;
  msgpack::packer<msgpack::sbuffer> pk(b);
  pk.pack_map(2);
  pk.pack(std::string("a"));
  pk.pack_array(5);
  pk.pack(uint64_t{1});
  pk.pack(int64_t{-2});
  pk.pack(std::string("x"));
  pk.pack_array(0);
  pk.pack_map(0);
  pk.pack(std::string("b"));
  pk.pack_map(1);
  pk.pack(std::string("c"));
  pk.pack_nil();
  EXPECT_EQ(r.out, std::vector<uint8_t>(b.data(), b.data() + b.size()));
  // A container of more than 15 elements takes the 16-bit header.
  std::string many = "[";
  for (int i = 0; i < 20; ++i) many += (i ? "," : "") + std::to_string(i);
  r = Convert(many + "]");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.out[0], 0xdc);
}

TEST(JsonToMsgpackTest, NestingBeyondTheLimitIsRefused) {
  EXPECT_TRUE(Convert("[[[1]]]", 3).ok);
  EXPECT_EQ(Convert("[[[[1]]]]", 3).error, "JSON nested too deep");
  EXPECT_EQ(Convert(std::string(100000, '['), 16).error, "JSON nested too deep");
}

TEST(JsonToMsgpackTest, MalformedDocumentsSayWhy) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"", "truncated JSON"},
      {"   ", "truncated JSON"},
      {"1 2", "trailing bytes after the JSON document"},
      {"tru", "unknown literal"},
      {"nul", "unknown literal"},
      {"fals", "unknown literal"},
      {"-", "not a JSON value"},
      {"x", "not a JSON value"},
      {"1.5", "non-integer number"},
      {"1e3", "non-integer number"},
      {"\"abc", "unterminated string"},
      {"\"a\\", "truncated escape"},
      {"\"\\q\"", "unknown escape"},
      {"\"\\u12\"", "truncated \\u escape"},
      {"\"\\u12G4\"", "bad \\u escape"},
      {"{1: 2}", "object key is not a string"},
      {"{\"a\" 2}", "missing ':' in object"},
      {"{\"a\": 2", "missing ',' or '}' in object"},
      {"{\"a\": 2 ]", "missing ',' or '}' in object"},
      {"[1, 2", "missing ',' or ']' in array"},
      {"[1 2]", "missing ',' or ']' in array"},
      {"[1,]", "not a JSON value"},
      {"{\"a\": \"b", "unterminated string"},
      {"{\"a", "unterminated string"},
      {"[", "truncated JSON"},
      {"{", "object key is not a string"},
  };
  for (const auto& [json, why] : cases) {
    Result r = Convert(json);
    EXPECT_FALSE(r.ok) << json;
    EXPECT_EQ(r.error, why) << json;
    EXPECT_TRUE(r.out.empty()) << json;
  }
}

}  // namespace
}  // namespace kvidx::ingest
