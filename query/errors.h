// kvidx's error reasons, the AIBrix KV event sync error codes (1001-1007,
// ../shared/spec/aibrix-surface.md) they correspond to, and the HTTP status of each gRPC code.
//
// Every refusal kvidx sends carries a kvidx.v1.ErrorDetail: `reason` (kvidx's name, e.g.
// UNKNOWN_SEQUENCE) and `code` (the AIBrix code where one means the same, else 0). The codes a
// process has sent are counted (ErrorCodeCounts) and reported in Stats.error_codes beside each
// publisher's (Pod.error_codes, PublisherErrorCodes).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "index/layout.h"

namespace kvidx::query {

enum AibrixCode : uint32_t {
  kNoAibrixCode = 0,
  kZmqConnectionError = 1001,
  kZmqTimeout = 1002,
  kInvalidEventFormat = 1003,
  kReplayFailed = 1004,
  kTokenizerError = 1005,
  kCacheFull = 1006,
  kSequenceNotFound = 1007,
};
inline constexpr uint32_t kFirstAibrixCode = 1001;
inline constexpr int kAibrixCodes = 7;

// The AIBrix name of a code ("SEQUENCE_NOT_FOUND"); "" for 0 or an unknown code.
std::string_view AibrixCodeName(uint32_t code);

// The AIBrix code of a kvidx reason (0: none means the same).
uint32_t AibrixCodeOf(std::string_view reason);

// gRPC status with a reason (also attached as a kvidx.v1.ErrorDetail with its AIBrix code);
// counts the code.
grpc::Status Error(grpc::StatusCode code, const std::string& reason, const std::string& message);

// Errors with an AIBrix code this process has answered, by code (index code - 1001).
std::array<uint64_t, kAibrixCodes> ErrorCodeCounts();

// A publisher's counters as AIBrix codes: 1001 connect retries, 1003 undecodable or refused
// events, 1004 replays that could not make the stream whole (resyncs, unverifiable gaps),
// 1006 stores refused for capacity (index, engine-hash table, quota, memory budgets).
std::array<uint64_t, kAibrixCodes> PublisherErrorCodes(const index::PublisherSlot& s);

// The HTTP status that answers a gRPC status code.
int HttpStatusOf(grpc::StatusCode code);

}  // namespace kvidx::query
