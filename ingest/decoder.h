// Decodes one msgpack payload of any supported dialect into an EventBatch.
//
// Decoding trusts no length: msgpack is unpacked with hard limits (elements, string and binary
// sizes, nesting depth), a payload that claims more than it has is truncated, trailing bytes
// are an error, and every field is type-checked. A payload that fails is rejected whole with a
// DecodeReason (for the per-reason counters) and an INVALID_ARGUMENT status saying why; nothing
// of it is returned. Events with an unknown tag are skipped and counted in
// EventBatch::unknown_events (wire.md §0: newer engines add event kinds), unless `strict` is
// set, which rejects the batch instead.
//
// Thread-safe: no state.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"

#include "ingest/events.h"

namespace kvidx::ingest {

using wire::DecodeReason;
using wire::DecodeReasonName;

struct DecodeLimits {
  uint64_t max_payload_bytes = 64u << 20;
  uint32_t max_array = 1u << 20;
  uint32_t max_map = 4096;
  uint32_t max_str = 1u << 20;
  uint32_t max_bin = 1u << 20;
  uint32_t max_depth = 16;
  uint32_t max_block_size = 65536;
  bool strict = false;
  // Skip the zero-allocation path (ingest/fast_decoder.h); tests compare the two.
  bool general_only = false;
};

absl::Status DecodeBatch(std::span<const uint8_t> payload, Dialect dialect, EventBatch* out,
                         DecodeReason* reason, const DecodeLimits& limits = {});

}  // namespace kvidx::ingest
