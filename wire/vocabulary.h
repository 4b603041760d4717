// The vocabulary ingest and query share about publishers' streams: the engine dialects, why a
// batch was rejected, and the state a publisher's stream is in. Words only; no logic. Both sides
// use it so that neither includes the other (docs/architecture.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace kvidx::wire {

enum class Dialect {
  kAuto,    // detected from each payload
  kVllm,    // vLLM KVEventBatch, array or map events, int or bin hashes (last 8 bytes)
  kSglang,  // SGLang KVEventBatch: bin hashes fold to the first 8 bytes, signed; cache_salt map
  kAibrix,  // {"events": [{"type": "BLOCK_STORED", ...}]}
  kSeqId,   // sequence_id / block_numbers / block_token_ids
  kKvbm,    // NVIDIA KVBM KvbmCacheEvents (Create / Remove / Shutdown)
};

// Parses "auto", "vllm", "sglang", "aibrix", "seqid", "kvbm".
std::optional<Dialect> ParseDialect(std::string_view name);
const char* DialectName(Dialect d);

// Why a batch was not applied (counted per reason in the segment header).
enum class DecodeReason {
  kOk = 0,
  kTooLarge,       // payload or an element over the limits
  kTruncated,      // fewer bytes than the msgpack claims
  kMalformed,      // not msgpack
  kTrailingBytes,  // bytes after the batch
  kBadShape,       // wrong container, missing field, inconsistent lengths
  kWrongType,      // a field of the wrong type
  kUnknownTag,     // (strict mode) an event kind this decoder does not know
  kNumReasons,
};
const char* DecodeReasonName(DecodeReason r);

// The state of a publisher's stream, as the ingest worker records it in the segment.
enum class StreamState : uint8_t {
  kStarting,   // the first replay (first contact or continuity check) has not completed
  kStreaming,  // live batches are applied as they come
  kReplaying,  // a replay fills a gap or rechecks continuity; live batches are buffered
  kUnreachable,
};
const char* StreamStateName(StreamState s);

}  // namespace kvidx::wire
