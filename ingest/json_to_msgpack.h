// Converts a JSON document to the equivalent msgpack, so that JSON-encoded event payloads
// (NVIDIA KVBM's serde_json form, wire.md §10) go through the same decoder as msgpack ones.
//
// Integers that do not fit 64 bits (a u128 up to 39 digits) become a 16-byte big-endian bin,
// the form the KVBM decoder accepts for u128. Nesting is limited to `max_depth`; strings may
// use the standard escapes (\uXXXX is emitted as UTF-8). Thread-safe: no state.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvidx::ingest {

// Returns false (with a reason in `error`) on malformed JSON, trailing bytes or too deep nesting.
bool JsonToMsgpack(std::span<const uint8_t> json, std::vector<uint8_t>* out, std::string* error,
                   int max_depth = 16);

}  // namespace kvidx::ingest
