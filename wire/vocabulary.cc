#include "wire/vocabulary.h"

namespace kvidx::wire {

std::optional<Dialect> ParseDialect(std::string_view name) {
  if (name == "auto" || name.empty()) return Dialect::kAuto;
  if (name == "vllm") return Dialect::kVllm;
  if (name == "sglang") return Dialect::kSglang;
  if (name == "aibrix") return Dialect::kAibrix;
  if (name == "seqid") return Dialect::kSeqId;
  if (name == "kvbm") return Dialect::kKvbm;
  return std::nullopt;
}

const char* DialectName(Dialect d) {
  switch (d) {
    case Dialect::kAuto:
      return "auto";
    case Dialect::kVllm:
      return "vllm";
    case Dialect::kSglang:
      return "sglang";
    case Dialect::kAibrix:
      return "aibrix";
    case Dialect::kSeqId:
      return "seqid";
    case Dialect::kKvbm:
      return "kvbm";
  }
  return "?";
}

const char* DecodeReasonName(DecodeReason r) {
  switch (r) {
    case DecodeReason::kOk:
      return "ok";
    case DecodeReason::kTooLarge:
      return "too_large";
    case DecodeReason::kTruncated:
      return "truncated";
    case DecodeReason::kMalformed:
      return "malformed";
    case DecodeReason::kTrailingBytes:
      return "trailing_bytes";
    case DecodeReason::kBadShape:
      return "bad_shape";
    case DecodeReason::kWrongType:
      return "wrong_type";
    case DecodeReason::kUnknownTag:
      return "unknown_tag";
    case DecodeReason::kNumReasons:
      break;
  }
  return "?";
}

const char* StreamStateName(StreamState s) {
  switch (s) {
    case StreamState::kStarting:
      return "starting";
    case StreamState::kStreaming:
      return "streaming";
    case StreamState::kReplaying:
      return "replaying";
    case StreamState::kUnreachable:
      return "unreachable";
  }
  return "?";
}

}  // namespace kvidx::wire
