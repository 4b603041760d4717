// A zero-allocation decoding path for the common case: vLLM / SGLang KVEventBatch as a
// msgpack array with array or map events of the three known kinds. It reads the payload with a
// bounds-checked cursor instead of building msgpack-c's object tree.
//
// It accepts only what it fully understands and answers kFallback for anything else (another
// dialect, a map batch, an unknown tag or key type, any malformation), so the general decoder
// (decoder.cc) stays the one authority on errors and their reasons. Tests check that whenever
// this path accepts a payload, the general decoder decodes it to the same events.
#pragma once

#include <cstdint>
#include <span>

#include "ingest/decoder.h"
#include "ingest/events.h"

namespace kvidx::ingest {

enum class FastResult { kOk, kFallback };

FastResult FastDecodeBatch(std::span<const uint8_t> payload, Dialect dialect, EventBatch* out,
                           const DecodeLimits& limits);

}  // namespace kvidx::ingest
