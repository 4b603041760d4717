// The reason -> AIBrix code table, the per-publisher codes and the HTTP mapping (query/errors.h).
#include "query/errors.h"

#include <cstring>

#include "gtest/gtest.h"

#include "kvidx.pb.h"

namespace kvidx::query {
namespace {

TEST(ErrorsTest, ReasonsCarryTheirAibrixCodeAndAreCounted) {
  const auto before = ErrorCodeCounts();
  grpc::Status st = Error(grpc::StatusCode::NOT_FOUND, "UNKNOWN_SEQUENCE", "no sequence 9");
  v1::ErrorDetail d;
  ASSERT_TRUE(d.ParseFromString(st.error_details()));
  EXPECT_EQ(d.reason(), "UNKNOWN_SEQUENCE");
  EXPECT_EQ(d.code(), 1007u);
  EXPECT_EQ(st.error_message(), "UNKNOWN_SEQUENCE: no sequence 9");
  EXPECT_EQ(ErrorCodeCounts()[6], before[6] + 1);
  // A reason without an AIBrix meaning has code 0 and counts nothing.
  st = Error(grpc::StatusCode::INVALID_ARGUMENT, "NO_INPUT", "x");
  ASSERT_TRUE(d.ParseFromString(st.error_details()));
  EXPECT_EQ(d.code(), 0u);
  EXPECT_EQ(ErrorCodeCounts(), [&] {
    auto a = before;
    a[6] += 1;
    return a;
  }());
  EXPECT_EQ(AibrixCodeOf("NO_WORKER"), 1002u);
  EXPECT_EQ(AibrixCodeOf("PUBLISHER_TABLE_FULL"), 1006u);
  EXPECT_EQ(AibrixCodeOf("TOKENIZER_FAILED"), 1005u);
}

TEST(ErrorsTest, CodeNames) {
  EXPECT_EQ(AibrixCodeName(1001), "ZMQ_CONNECTION_ERROR");
  EXPECT_EQ(AibrixCodeName(1004), "REPLAY_FAILED");
  EXPECT_EQ(AibrixCodeName(1007), "SEQUENCE_NOT_FOUND");
  EXPECT_EQ(AibrixCodeName(1000), "");
  EXPECT_EQ(AibrixCodeName(1008), "");
}

TEST(ErrorsTest, PublisherCountersBecomeCodes) {
  index::PublisherSlot s;
  std::memset(&s, 0, sizeof(s));
  s.ingest.connect_retries = 3;
  s.ingest.decode_errors = 2;
  s.ingest.block_size_mismatches = 1;
  s.ingest.resyncs = 4;
  s.index.rejected_stores = 5;
  s.index.engine_table_full = 1;
  const auto c = PublisherErrorCodes(s);
  EXPECT_EQ(c[0], 3u);  // 1001
  EXPECT_EQ(c[1], 0u);  // 1002: not a publisher's
  EXPECT_EQ(c[2], 3u);  // 1003
  EXPECT_EQ(c[3], 4u);  // 1004
  EXPECT_EQ(c[4], 0u);  // 1005: the query's
  EXPECT_EQ(c[5], 6u);  // 1006
  EXPECT_EQ(c[6], 0u);  // 1007: the query's
}

TEST(ErrorsTest, HttpStatusOfEveryCode) {
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::OK), 200);
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::INVALID_ARGUMENT), 400);
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::PERMISSION_DENIED), 403);
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::NOT_FOUND), 404);
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::RESOURCE_EXHAUSTED), 429);
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::UNAVAILABLE), 503);
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::DEADLINE_EXCEEDED), 504);
  EXPECT_EQ(HttpStatusOf(grpc::StatusCode::INTERNAL), 500);
}

}  // namespace
}  // namespace kvidx::query
