#include "query/errors.h"

#include <atomic>

#include "kvidx.pb.h"

namespace kvidx::query {

using index::Ld;

namespace {

constexpr std::string_view kCodeNames[kAibrixCodes] = {
    "ZMQ_CONNECTION_ERROR", "ZMQ_TIMEOUT", "INVALID_EVENT_FORMAT", "REPLAY_FAILED",
    "TOKENIZER_ERROR",      "CACHE_FULL",  "SEQUENCE_NOT_FOUND"};

struct ReasonCode {
  std::string_view reason;
  uint32_t code;
};
// kvidx reasons with an AIBrix meaning; every other reason has code 0.
constexpr ReasonCode kReasonCodes[] = {
    {"NO_WORKER", kZmqTimeout},  // the owning ingest worker did not answer in time
    {"TOKENIZER_FAILED", kTokenizerError},
    {"TOKENIZER_TIMEOUT", kTokenizerError},
    {"PUBLISHER_TABLE_FULL", kCacheFull},
    {"NAMESPACE_TABLE_FULL", kCacheFull},
    {"UNKNOWN_SEQUENCE", kSequenceNotFound},
};

std::atomic<uint64_t> g_counts[kAibrixCodes];

}  // namespace

std::string_view AibrixCodeName(uint32_t code) {
  if (code < kFirstAibrixCode || code >= kFirstAibrixCode + kAibrixCodes) return "";
  return kCodeNames[code - kFirstAibrixCode];
}

uint32_t AibrixCodeOf(std::string_view reason) {
  for (const ReasonCode& rc : kReasonCodes)
    if (rc.reason == reason) return rc.code;
  return kNoAibrixCode;
}

grpc::Status Error(grpc::StatusCode code, const std::string& reason, const std::string& message) {
  v1::ErrorDetail d;
  d.set_reason(reason);
  const uint32_t aibrix = AibrixCodeOf(reason);
  d.set_code(aibrix);
  if (aibrix != kNoAibrixCode)
    g_counts[aibrix - kFirstAibrixCode].fetch_add(1, std::memory_order_relaxed);
  return grpc::Status(code, reason + ": " + message, d.SerializeAsString());
}

std::array<uint64_t, kAibrixCodes> ErrorCodeCounts() {
  std::array<uint64_t, kAibrixCodes> out{};
  for (int i = 0; i < kAibrixCodes; ++i) out[i] = g_counts[i].load(std::memory_order_relaxed);
  return out;
}

std::array<uint64_t, kAibrixCodes> PublisherErrorCodes(const index::PublisherSlot& s) {
  std::array<uint64_t, kAibrixCodes> c{};
  c[kZmqConnectionError - kFirstAibrixCode] = Ld(s.ingest.connect_retries);
  c[kInvalidEventFormat - kFirstAibrixCode] = Ld(s.ingest.decode_errors) +
                                              Ld(s.ingest.block_size_mismatches) +
                                              Ld(s.ingest.foreign_model_events);
  c[kReplayFailed - kFirstAibrixCode] = Ld(s.ingest.resyncs) + Ld(s.ingest.unverifiable_gaps);
  c[kCacheFull - kFirstAibrixCode] = Ld(s.index.rejected_stores) + Ld(s.index.engine_table_full) +
                                     Ld(s.ingest.budget_drops) + Ld(s.ingest.adapter_limit_events);
  return c;
}

int HttpStatusOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 400;
    case grpc::StatusCode::UNAUTHENTICATED:
      return 401;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 403;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED:
      return 409;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::CANCELLED:
      return 499;
    case grpc::StatusCode::UNIMPLEMENTED:
      return 501;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 504;
    default:
      return 500;
  }
}

}  // namespace kvidx::query
