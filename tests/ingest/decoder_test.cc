#include "ingest/decoder.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <msgpack.hpp>

#include "ingest/fast_decoder.h"
#include "tests/ingest/same_events.h"
#include "tests/test_data.h"
#include "wire/lineage_hash.h"

namespace kvidx::ingest {
namespace {

using ::kvidx::testing::ReadHexFile;
using ::testing::ElementsAre;

constexpr uint64_t kH1 = 0x1122334455667788ULL;
constexpr uint64_t kH2 = 0xF0E1D2C3B4A59687ULL;
constexpr uint64_t kP = 0x0123456789ABCDEFULL;
constexpr uint64_t kR = 0xDEADBEEFCAFEBABEULL;
const std::vector<uint32_t> kTokens = {1,     2,      3, 128, 255, 256, 1000, 65535,
                                       65536, 151644, 7, 8,   9,   10,  11,   12};

EventBatch MustDecode(const std::vector<uint8_t>& bytes, Dialect d = Dialect::kAuto) {
  EventBatch b;
  DecodeReason r;
  absl::Status st = DecodeBatch(bytes, d, &b, &r);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(r, DecodeReason::kOk);
  return b;
}

DecodeReason MustFail(const std::vector<uint8_t>& bytes, Dialect d = Dialect::kAuto,
                      DecodeLimits limits = {}) {
  EventBatch b;
  DecodeReason r = DecodeReason::kOk;
  absl::Status st = DecodeBatch(bytes, d, &b, &r, limits);
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_TRUE(b.events.empty());
  return r;
}

void ExpectExampleStored(const Event& e) {
  EXPECT_EQ(e.kind, EventKind::kStored);
  EXPECT_THAT(e.hashes, ElementsAre(kH1, kH2));
  ASSERT_TRUE(e.parent.has_value());
  EXPECT_EQ(*e.parent, kP);
  EXPECT_EQ(e.tokens, kTokens);
  EXPECT_EQ(e.block_size, 8u);
  EXPECT_FALSE(e.lora_id.has_value());
  EXPECT_FALSE(e.lora_name.has_value());
  EXPECT_EQ(e.tier, index::kGpu);
}

TEST(DecoderGoldenTest, VllmArrayEra) {
  auto bytes = ReadHexFile("vllm_array_era.hex");
  ASSERT_EQ(bytes.size(), 144u);
  EventBatch b = MustDecode(bytes);
  EXPECT_EQ(b.dialect, Dialect::kVllm);
  EXPECT_DOUBLE_EQ(b.ts, 1700000000.5);
  ASSERT_EQ(b.dp_rank, 0);
  ASSERT_EQ(b.events.size(), 2u);
  ExpectExampleStored(b.events[0]);
  EXPECT_TRUE(b.events[0].has_extra_keys);
  EXPECT_EQ(b.events[0].group_idx, 0);
  EXPECT_EQ(b.events[1].kind, EventKind::kRemoved);
  EXPECT_THAT(b.events[1].hashes, ElementsAre(kR));
}

TEST(DecoderGoldenTest, VllmMapEra) {
  auto bytes = ReadHexFile("vllm_map_era.hex");
  ASSERT_EQ(bytes.size(), 300u);
  EventBatch b = MustDecode(bytes);
  ASSERT_EQ(b.events.size(), 2u);
  ExpectExampleStored(b.events[0]);
  EXPECT_EQ(b.events[1].kind, EventKind::kRemoved);
  EXPECT_THAT(b.events[1].hashes, ElementsAre(kR));
}

TEST(DecoderGoldenTest, VllmFirstReleaseWithNegativeParent) {
  auto bytes = ReadHexFile("vllm_first_release.hex");
  ASSERT_EQ(bytes.size(), 113u);
  EventBatch b = MustDecode(bytes);
  EXPECT_FALSE(b.dp_rank.has_value());
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_EQ(*b.events[0].parent, 0x8877665544332211ULL);  // two's complement of the int64
  EXPECT_EQ(b.events[0].tokens, kTokens);
  EXPECT_THAT(b.events[1].hashes, ElementsAre(kR));
  EXPECT_EQ(b.events[1].tier, index::kGpu);  // no medium: GPU
}

TEST(DecoderGoldenTest, VllmBytesHashesFoldToLastEightBytes) {
  auto bytes = ReadHexFile("vllm_bytes_hashes.hex");
  ASSERT_EQ(bytes.size(), 124u);
  EventBatch b = MustDecode(bytes);
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_THAT(b.events[0].hashes, ElementsAre(0x18191a1b1c1d1e1fULL));
  EXPECT_EQ(b.events[1].kind, EventKind::kCleared);
}

TEST(DecoderGoldenTest, SglangFoldsFirstEightBytesAndReadsCacheSalt) {
  auto bytes = ReadHexFile("sglang_salt.hex");
  EventBatch b = MustDecode(bytes, Dialect::kSglang);
  EXPECT_EQ(b.dialect, Dialect::kSglang);
  EXPECT_EQ(b.dp_rank, 1);
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_THAT(b.events[0].hashes, ElementsAre(0xa0a1a2a3a4a5a6a7ULL));
  EXPECT_EQ(b.events[0].cache_salt, "s1");
  EXPECT_FALSE(b.events[0].lora_name.has_value());
  EXPECT_EQ(b.events[0].tier, index::kCpu);
  EXPECT_THAT(b.events[0].tokens, ElementsAre(11, 12));
  EXPECT_EQ(b.events[0].block_size, 2u);
  EXPECT_THAT(b.events[1].hashes, ElementsAre(0xFFFFFFFFFFFFFFFEULL));
  EXPECT_EQ(b.events[1].tier, index::kDisk);
  // Decoded as vLLM, the same digest folds to its last 8 bytes instead.
  EventBatch v = MustDecode(bytes, Dialect::kVllm);
  EXPECT_THAT(v.events[0].hashes, ElementsAre(0xb8b9babbbcbdbebfULL));
}

// A vLLM batch with one BlockStored, packed with msgpack-cxx: as a tagged array (map: false)
// or a map event, with `extra` as its extra_keys (packed as given; an empty string is nil).
std::vector<uint8_t> StoredWithExtra(bool map, std::vector<uint64_t> hashes,
                                     const std::vector<std::string>& extra_packed) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_array(3);
  pk.pack(1.5);
  pk.pack_array(1);
  std::vector<uint32_t> tokens(hashes.size() * 2, 7);
  auto extras = [&] {
    pk.pack_array(static_cast<uint32_t>(extra_packed.size()));
    for (const std::string& e : extra_packed) {
      if (e.empty()) {
        pk.pack_nil();
      } else {
        buf.write(e.data(), e.size());  // already msgpack
      }
    }
  };
  if (map) {
    pk.pack_map(5);
    pk.pack(std::string("type"));
    pk.pack(std::string("BlockStored"));
    pk.pack(std::string("block_hashes"));
    pk.pack(hashes);
    pk.pack(std::string("token_ids"));
    pk.pack(tokens);
    pk.pack(std::string("block_size"));
    pk.pack(2);
    pk.pack(std::string("extra_keys"));
    extras();
  } else {
    pk.pack_array(9);
    pk.pack(std::string("BlockStored"));
    pk.pack(hashes);
    pk.pack_nil();
    pk.pack(tokens);
    pk.pack(2);
    pk.pack_nil();
    pk.pack(std::string("GPU"));
    pk.pack_nil();
    extras();
  }
  pk.pack(0);
  return {reinterpret_cast<const uint8_t*>(buf.data()),
          reinterpret_cast<const uint8_t*>(buf.data()) + buf.size()};
}

TEST(DecoderGoldenTest, VllmExtraKeysAreKeptAsTheirMsgpackBytes) {
  const std::string image("\x91\x92\xa3img\x00", 7);  // [["img", 0]]
  const std::string salt("\x91\xa4salt", 6);          // ["salt"]
  for (bool map : {false, true}) {
    EventBatch b = MustDecode(StoredWithExtra(map, {kH1, kH2}, {image, ""}));
    ASSERT_EQ(b.events.size(), 1u);
    EXPECT_TRUE(b.events[0].has_extra_keys);
    EXPECT_THAT(b.events[0].extra_keys, ElementsAre(image, "")) << "map " << map;
    b = MustDecode(StoredWithExtra(map, {kH1}, {salt}));
    EXPECT_THAT(b.events[0].extra_keys, ElementsAre(salt));
    // Only nils: nothing to key, the same as no extra_keys.
    b = MustDecode(StoredWithExtra(map, {kH1, kH2}, {"", ""}));
    EXPECT_TRUE(b.events[0].has_extra_keys);
    EXPECT_TRUE(b.events[0].extra_keys.empty());
    // One entry for two blocks; an entry past the 4 KiB bound.
    EXPECT_EQ(MustFail(StoredWithExtra(map, {kH1, kH2}, {image})), DecodeReason::kBadShape);
    std::string big("\xc5\x13\x88", 3);  // bin16 of 5000 bytes
    big.append(5000, 'x');
    EXPECT_EQ(MustFail(StoredWithExtra(map, {kH1}, {big})), DecodeReason::kTooLarge);
  }
}

TEST(DecoderGoldenTest, Aibrix) {
  EventBatch b = MustDecode(ReadHexFile("aibrix.hex"));
  EXPECT_EQ(b.dialect, Dialect::kAibrix);
  ASSERT_EQ(b.events.size(), 1u);
  EXPECT_EQ(b.events[0].kind, EventKind::kStored);
  EXPECT_THAT(b.events[0].hashes, ElementsAre(0x10u));
  EXPECT_THAT(b.events[0].tokens, ElementsAre(1, 2));
  EXPECT_EQ(b.events[0].block_size, 2u);
  EXPECT_FALSE(b.events[0].parent.has_value());
  EXPECT_EQ(b.events[0].model_name, "");
}

TEST(DecoderGoldenTest, SequenceIdForm) {
  EventBatch b = MustDecode(ReadHexFile("seqid.hex"));
  EXPECT_EQ(b.dialect, Dialect::kSeqId);
  ASSERT_EQ(b.events.size(), 3u);
  EXPECT_EQ(b.events[0].kind, EventKind::kSeqStored);
  EXPECT_EQ(b.events[0].sequence_id, 12345);
  EXPECT_THAT(b.events[0].block_numbers, ElementsAre(0, 1, 2));
  EXPECT_THAT(b.events[0].tokens, ElementsAre(101, 102, 103, 104, 105, 106));
  EXPECT_EQ(b.events[0].block_size, 2u);
  EXPECT_EQ(b.events[1].kind, EventKind::kSeqRemoved);
  EXPECT_THAT(b.events[1].block_numbers, ElementsAre(0, 1));
  EXPECT_EQ(b.events[2].kind, EventKind::kRequestFinished);
  EXPECT_EQ(b.events[2].request_id, "r1");
  EXPECT_TRUE(b.events[2].finished);
}

TEST(DecoderGoldenTest, KvbmNamedAndIndexedEncodings) {
  EventBatch b = MustDecode(ReadHexFile("kvbm_named.hex"));
  EXPECT_EQ(b.dialect, Dialect::kKvbm);
  ASSERT_TRUE(b.instance_id.has_value());
  EXPECT_EQ(b.instance_id->first, 0u);
  EXPECT_EQ(b.instance_id->second, 0x0102u);
  ASSERT_EQ(b.events.size(), 1u);
  EXPECT_EQ(b.events[0].kind, EventKind::kStored);
  // Each lineage hash is kept whole: position, parent and current fragments.
  const wire::LineageHash first =
      *wire::UnpackLineageHash(0x1111111111111111ULL, 0x2222222222222222ULL);
  EXPECT_EQ(first.position, 0x44u);  // mode 0: the top byte after the mode bits
  EXPECT_THAT(b.events[0].hashes,
              ElementsAre(wire::LineageEngineHash(first), wire::LineageEngineHash({0, 0, 7})));
  EXPECT_THAT(b.events[0].positions, ElementsAre(0x44u, 0u));

  EventBatch r = MustDecode(ReadHexFile("kvbm_indexed.hex"));
  EXPECT_EQ(r.dialect, Dialect::kKvbm);
  EXPECT_EQ(r.instance_id->second, 9u);
  ASSERT_EQ(r.events.size(), 1u);
  EXPECT_EQ(r.events[0].kind, EventKind::kRemoved);
  EXPECT_THAT(r.events[0].hashes,
              ElementsAre(wire::LineageEngineHash({0, 0, 5}), wire::LineageEngineHash({0, 0, 6})));

  // ["Shutdown", 3] and [[2, []], 3]: the unit variant both ways.
  EventBatch s = MustDecode({0x92, 0xa8, 'S', 'h', 'u', 't', 'd', 'o', 'w', 'n', 0x03});
  ASSERT_EQ(s.events.size(), 1u);
  EXPECT_EQ(s.events[0].kind, EventKind::kCleared);
  EventBatch s2 = MustDecode({0x92, 0x92, 0x02, 0x90, 0x03});
  EXPECT_EQ(s2.events.at(0).kind, EventKind::kCleared);
}

std::vector<uint8_t> Text(const std::string& s) { return {s.begin(), s.end()}; }

TEST(DecoderGoldenTest, KvbmJson) {
  // serde_json, as KVBM's own tests write it: a u128 instance id and hashes as JSON integers.
  EventBatch b = MustDecode(Text(R"({"events": {"Create": [1, 18446744073709551616]},)"
                                 R"( "instance_id": 12345})"));
  EXPECT_EQ(b.dialect, Dialect::kKvbm);
  EXPECT_EQ(b.instance_id->second, 12345u);
  ASSERT_EQ(b.events.size(), 1u);
  // u128 hashes as JSON integers: 2^128 - 1 is of mode 3 (undefined) and refused below; 2^64
  // is position 0, parent fragment 32, current 0.
  EXPECT_THAT(b.events[0].hashes,
              ElementsAre(wire::LineageEngineHash({0, 0, 1}), wire::LineageEngineHash({0, 32, 0})));
  // The struct form, as a map and as an array in field order, names the block its u128 form
  // names: fragments truncated to the width the u128 form has at that position.
  const uint64_t big = (1ull << 62) | 42;  // wider than a mode-0 fragment
  EventBatch st = MustDecode(Text(absl::StrCat(
      R"({"events": {"Create": [{"current": )", big, R"(, "parent": 7, "position": 16,)",
      R"( "flags": 0}, [5, 6, 300, 0]]}, "instance_id": 2})")));
  const auto packed = *wire::PackLineageHash({16, 7, big});
  const wire::LineageHash via_u128 = *wire::UnpackLineageHash(packed.first, packed.second);
  EXPECT_EQ(via_u128.current, 42u);
  EXPECT_THAT(st.events.at(0).hashes,
              ElementsAre(wire::LineageEngineHash(via_u128), wire::LineageEngineHash({300, 6, 5})));
  EXPECT_THAT(st.events.at(0).positions, ElementsAre(16u, 300u));
  EXPECT_EQ(MustFail(Text(R"({"events": {"Create": [340282366920938463463374607431768211455]},)"
                          R"( "instance_id": 1})")),
            DecodeReason::kBadShape);  // mode 3
  EXPECT_EQ(MustFail(Text(R"({"events": {"Create": [[1, 2, 16777216, 0]]}, "instance_id": 1})")),
            DecodeReason::kBadShape);  // position past 24 bits
  EXPECT_EQ(MustFail(Text(R"({"events": {"Create": [{"current": 1}]}, "instance_id": 1})")),
            DecodeReason::kBadShape);
  EventBatch s = MustDecode(Text(R"({"events": "Shutdown", "instance_id": 7})"), Dialect::kKvbm);
  EXPECT_EQ(s.events.at(0).kind, EventKind::kCleared);
  EventBatch r = MustDecode(Text("{ \"instance_id\" : 1 , \"events\" : {\"Remove\": [ 9 ]} }"));
  EXPECT_EQ(r.events.at(0).kind, EventKind::kRemoved);
  EXPECT_EQ(MustFail(Text(R"({"events": {"Create": [1, 2.5]}, "instance_id": 1})")),
            DecodeReason::kMalformed);
  EXPECT_EQ(MustFail(Text(R"({"events": {"Create": [1)")), DecodeReason::kMalformed);
  EXPECT_EQ(MustFail(Text(R"({"events": "Shutdown", "instance_id": 1} x)")),
            DecodeReason::kMalformed);
  EXPECT_EQ(MustFail(Text(std::string(100, '{'))), DecodeReason::kMalformed);  // too deep
  EXPECT_EQ(
      MustFail(Text(
          R"({"events": {"Create": [1]}, "instance_id": 3402823669209384634633746074317682114560})")),
      DecodeReason::kMalformed);  // over 128 bits
}

TEST(DecoderGoldenTest, BatchAsMapIsAccepted) {
  // {"ts": 1.5, "events": [["AllBlocksCleared"]], "data_parallel_rank": 2} (wire.md U1).
  std::vector<uint8_t> bytes = {0x83, 0xa2, 't', 's',  0xcb, 0x3f, 0xf8, 0,   0,    0,    0,    0,
                                0,    0xa6, 'e', 'v',  'e',  'n',  't',  's', 0x91, 0x91, 0xb0, 'A',
                                'l',  'l',  'B', 'l',  'o',  'c',  'k',  's', 'C',  'l',  'e',  'a',
                                'r',  'e',  'd', 0xb2, 'd',  'a',  't',  'a', '_',  'p',  'a',  'r',
                                'a',  'l',  'l', 'e',  'l',  '_',  'r',  'a', 'n',  'k',  0x02};
  EventBatch b = MustDecode(bytes);
  EXPECT_DOUBLE_EQ(b.ts, 1.5);
  EXPECT_EQ(b.dp_rank, 2);
  ASSERT_EQ(b.events.size(), 1u);
  EXPECT_EQ(b.events[0].kind, EventKind::kCleared);
}

TEST(DecoderRejectTest, TruncatedAndTrailingAndGarbage) {
  auto bytes = ReadHexFile("vllm_array_era.hex");
  for (size_t cut : {1ul, 10ul, 50ul, 143ul}) {
    EXPECT_EQ(MustFail({bytes.begin(), bytes.begin() + cut}), DecodeReason::kTruncated) << cut;
  }
  auto longer = bytes;
  longer.push_back(0x00);
  EXPECT_EQ(MustFail(longer), DecodeReason::kTrailingBytes);
  EXPECT_EQ(MustFail({}), DecodeReason::kTruncated);
  EXPECT_EQ(MustFail({0xc1}), DecodeReason::kMalformed);  // never-used byte
  EXPECT_EQ(MustFail({0x2a}), DecodeReason::kBadShape);   // a bare int
}

TEST(DecoderRejectTest, ArrayClaimingMoreElementsThanBytes) {
  // array32 claiming 4 billion elements, then nothing.
  EXPECT_EQ(MustFail({0xdd, 0xff, 0xff, 0xff, 0xff}), DecodeReason::kTooLarge);
  // array32 claiming 1000 elements (under the limit) with three present.
  EXPECT_EQ(MustFail({0xdd, 0x00, 0x00, 0x03, 0xe8, 0x01, 0x02, 0x03}), DecodeReason::kTruncated);
  // bin32 claiming 2 GiB with nothing behind it: rejected before anything is allocated.
  EXPECT_EQ(MustFail({0x93, 0x00, 0x91, 0x92, 0xab, 'B',  'l',  'o',  'c',  'k',  'R', 'e',
                      'm',  'o',  'v',  'e',  'd',  0x91, 0xc6, 0x80, 0x00, 0x00, 0x00}),
            DecodeReason::kTruncated);
  // A real 2 MiB bin hash: over the 1 MiB element limit.
  std::vector<uint8_t> big = {0x93, 0x00, 0x91, 0x92, 0xab, 'B',  'l',  'o',  'c',  'k',  'R', 'e',
                              'm',  'o',  'v',  'e',  'd',  0x91, 0xc6, 0x00, 0x20, 0x00, 0x00};
  big.resize(big.size() + (2u << 20), 0xab);
  big.push_back(0x00);
  EXPECT_EQ(MustFail(big), DecodeReason::kTooLarge);
  DecodeLimits small;
  small.max_payload_bytes = 16;
  EXPECT_EQ(MustFail(ReadHexFile("vllm_array_era.hex"), Dialect::kAuto, small),
            DecodeReason::kTooLarge);
}

TEST(DecoderRejectTest, WrongTypesAndShapes) {
  // [ts, "not events", 0]
  EXPECT_EQ(MustFail({0x93, 0x00, 0xa1, 'x', 0x00}), DecodeReason::kWrongType);
  // ts is a string
  EXPECT_EQ(MustFail({0x92, 0xa1, 'x', 0x90}), DecodeReason::kWrongType);
  // BlockRemoved with a string hash: ["BlockRemoved", ["h"]]
  std::vector<uint8_t> removed = {0x92, 0x00, 0x91, 0x92, 0xac, 'B', 'l', 'o',  'c',  'k',
                                  'R',  'e',  'm',  'o',  'v',  'e', 'd', 0x91, 0xa1, 'h'};
  EXPECT_EQ(MustFail(removed), DecodeReason::kWrongType);
  // BlockStored with 3 tokens for 1 block of 2: shape error.
  std::vector<uint8_t> stored = {0x92, 0x00, 0x91, 0x96, 0xab, 'B',  'l', 'o',  'c',
                                 'k',  'S',  't',  'o',  'r',  'e',  'd', 0x91, 0x05,
                                 0xc0, 0x93, 1,    2,    3,    0x02, 0xc0};
  EXPECT_EQ(MustFail(stored), DecodeReason::kBadShape);
  // A negative token id.
  stored[19] = 0x92;
  stored[20] = 0xff;  // -1
  stored[21] = 0x02;
  stored[22] = 0x02;
  stored.erase(stored.begin() + 23);
  EXPECT_EQ(MustFail(stored), DecodeReason::kWrongType);
}

TEST(DecoderRejectTest, UnknownTagsAreSkippedAndCountedOrRejectedWhenStrict) {
  // [0, [["Mystery", 1], ["AllBlocksCleared"]]]
  std::vector<uint8_t> bytes = {0x92, 0x00, 0x92, 0x92, 0xa7, 'M', 'y', 's', 't', 'e', 'r',
                                'y',  0x01, 0x91, 0xb0, 'A',  'l', 'l', 'B', 'l', 'o', 'c',
                                'k',  's',  'C',  'l',  'e',  'a', 'r', 'e', 'd'};
  EventBatch b = MustDecode(bytes);
  EXPECT_EQ(b.unknown_events, 1u);
  ASSERT_EQ(b.events.size(), 1u);
  EXPECT_EQ(b.events[0].kind, EventKind::kCleared);
  DecodeLimits strict;
  strict.strict = true;
  EXPECT_EQ(MustFail(bytes, Dialect::kAuto, strict), DecodeReason::kUnknownTag);
}

TEST(DecoderRejectTest, DeepNestingIsBounded) {
  std::vector<uint8_t> deep(200, 0x91);
  deep.push_back(0x00);
  EXPECT_EQ(MustFail(deep), DecodeReason::kTooLarge);
}

// Random bytes and random mutations of valid payloads never crash the decoder.
// The peak resident set, in KiB, of a child process that decodes `payload` (under each path)
// after mapping its pages; -1 if the child failed. A child, so that the figure is this
// decode's alone.
long PeakKiBDecoding(const std::vector<uint8_t>& payload) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    long peak = -1;
    for (bool general : {false, true}) {
      EventBatch b;
      DecodeReason why;
      DecodeLimits lim;
      lim.general_only = general;
      (void)DecodeBatch(payload, Dialect::kAuto, &b, &why, lim);
    }
    rusage ru{};
    if (getrusage(RUSAGE_SELF, &ru) == 0) peak = ru.ru_maxrss;
    (void)!write(fds[1], &peak, sizeof peak);
    _exit(0);
  }
  close(fds[1]);
  long peak = -1;
  if (read(fds[0], &peak, sizeof peak) != sizeof peak) peak = -1;
  close(fds[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  return peak;
}

// Issue 11: a few bytes that claim a million events, or a million elements at each of 16
// nested levels, are refused without allocating what they claim (before: ~300 MiB for the
// events of the fast path, 16 x 16 MiB for msgpack-c's arrays in the general one).
TEST(DecoderRejectTest, ClaimedCountsCostNoMoreThanThePayloadHolds) {
  std::vector<uint8_t> small{0x92, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x90};  // [0.0, []]
  const long base = PeakKiBDecoding(small);
  ASSERT_GT(base, 0);
  // [ts, <array of 1,000,000 events>] followed by 64 KiB of empty arrays.
  std::vector<uint8_t> events{0x92, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0x00, 0x0f, 0x42, 0x40};
  events.resize(events.size() + 65536, 0x90);
  // 16 nested arrays, each claiming 1,000,000 elements.
  std::vector<uint8_t> nested;
  for (int i = 0; i < 16; ++i) nested.insert(nested.end(), {0xdd, 0x00, 0x0f, 0x42, 0x40});
  nested.resize(nested.size() + 65536, 0xc0);
  for (const auto* p : {&events, &nested}) {
    EventBatch b;
    DecodeReason why = DecodeReason::kOk;
    EXPECT_FALSE(DecodeBatch(*p, Dialect::kAuto, &b, &why).ok());
    EXPECT_NE(why, DecodeReason::kOk);
    const long peak = PeakKiBDecoding(*p);
    ASSERT_GT(peak, 0);
    EXPECT_LT(peak - base, 8 * 1024) << "decoding " << p->size() << " bytes peaked at " << peak
                                     << " KiB, " << base << " KiB for an empty batch";
  }
}

TEST(DecoderFuzzTest, RandomInputNeverCrashes) {
  std::mt19937 rng(5);
  std::vector<std::vector<uint8_t>> seeds;
  for (const char* f : {"vllm_array_era.hex", "vllm_map_era.hex", "sglang_salt.hex", "aibrix.hex",
                        "seqid.hex", "kvbm_named.hex"}) {
    seeds.push_back(ReadHexFile(f));
  }
  int ok = 0;
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> bytes = seeds[i % seeds.size()];
    int flips = 1 + rng() % 4;
    for (int k = 0; k < flips; ++k) bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
    if (i % 7 == 0) bytes.resize(rng() % (bytes.size() + 1));
    EventBatch b;
    DecodeReason r;
    ok += DecodeBatch(bytes, Dialect::kAuto, &b, &r).ok();
  }
  EXPECT_GT(ok, 0);
}

// Whenever the zero-allocation path accepts a payload, the general decoder must decode it to
// the same events: on every golden payload and on 50,000 mutations of them.
TEST(FastDecoderTest, AgreesWithTheGeneralDecoderWheneverItAccepts) {
  std::mt19937 rng(11);
  int fast_ok = 0, checked = 0;
  for (const char* f : {"vllm_array_era.hex", "vllm_map_era.hex", "vllm_first_release.hex",
                        "vllm_bytes_hashes.hex", "sglang_salt.hex", "aibrix.hex", "seqid.hex"}) {
    auto seed = ReadHexFile(f);
    for (int i = 0; i < 8000; ++i) {
      std::vector<uint8_t> bytes = seed;
      if (i > 0) {
        int flips = 1 + rng() % 3;
        for (int k = 0; k < flips; ++k) bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
      }
      for (Dialect d : {Dialect::kAuto, Dialect::kSglang}) {
        EventBatch fast;
        if (FastDecodeBatch(bytes, d, &fast, {}) != FastResult::kOk) continue;
        ++fast_ok;
        EventBatch general;
        DecodeReason r;
        DecodeLimits only;
        only.general_only = true;
        absl::Status st = DecodeBatch(bytes, d, &general, &r, only);
        ASSERT_TRUE(st.ok()) << f << " mutation " << i << ": fast accepted, general said " << st;
        std::string why;
        ASSERT_TRUE(SameEvents(fast, general, &why)) << f << " mutation " << i << ": " << why;
        ++checked;
      }
    }
  }
  EXPECT_GT(fast_ok, 100);  // the golden vLLM/SGLang payloads themselves take the fast path
  EXPECT_EQ(checked, fast_ok);
}

TEST(FastDecoderTest, OtherDialectsAndRicherShapesFallBack) {
  EventBatch b;
  EXPECT_EQ(FastDecodeBatch(ReadHexFile("aibrix.hex"), Dialect::kAuto, &b, {}),
            FastResult::kFallback);
  EXPECT_EQ(FastDecodeBatch(ReadHexFile("kvbm_named.hex"), Dialect::kAuto, &b, {}),
            FastResult::kFallback);
  EXPECT_EQ(FastDecodeBatch(ReadHexFile("vllm_array_era.hex"), Dialect::kKvbm, &b, {}),
            FastResult::kFallback);
  // SGLang's cache_salt map at index 7 is left to the general decoder.
  EXPECT_EQ(FastDecodeBatch(ReadHexFile("sglang_salt.hex"), Dialect::kSglang, &b, {}),
            FastResult::kFallback);
  EXPECT_EQ(FastDecodeBatch(ReadHexFile("vllm_array_era.hex"), Dialect::kAuto, &b, {}),
            FastResult::kOk);
  EXPECT_EQ(FastDecodeBatch(ReadHexFile("vllm_map_era.hex"), Dialect::kAuto, &b, {}),
            FastResult::kOk);
}

}  // namespace
}  // namespace kvidx::ingest
