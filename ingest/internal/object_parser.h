// The general msgpack decoder's parser: an msgpack object tree to events, for every dialect.
//
// Private to ingest/: decoder.cc drives it; its methods live in object_parser.cc and, for
// NVIDIA KVBM, kvbm_parser.cc. Every method returns false after recording the first failure
// (reason and detail); nothing it returns is trusted by the caller after that.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#include "ingest/decoder.h"
#include "ingest/dialect_rules.h"
#include "ingest/events.h"
#include "wire/lineage_hash.h"

namespace kvidx::ingest::internal {

using msgpack::object;
namespace t = msgpack::type;

inline std::string_view Str(const object& o) { return {o.via.str.ptr, o.via.str.size}; }

inline const object* Get(const object& map, std::string_view key) {
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const auto& kv = map.via.map.ptr[i];
    if (kv.key.type == t::STR && Str(kv.key) == key) return &kv.val;
  }
  return nullptr;
}

inline bool IsInt(const object& o) {
  return o.type == t::POSITIVE_INTEGER || o.type == t::NEGATIVE_INTEGER;
}

class Parser {
 public:
  Parser(Dialect dialect, const DecodeLimits& limits) : dialect_(dialect), limits_(limits) {}

  DecodeReason reason() const { return reason_; }
  const std::string& detail() const { return detail_; }

  bool Fail(DecodeReason r, std::string detail);

  bool Root(const object& root, EventBatch* b);

 private:
  static bool LooksKvbm(const object& root);

  static bool LooksAibrix(const object& ev);

  bool Number(const object& o, double* out, const char* what);

  bool Int(const object& o, int64_t* out, const char* what);

  bool OptInt(const object* o, std::optional<int64_t>* out, const char* what);

  bool OptStr(const object* o, std::optional<std::string>* out, const char* what);

  bool Medium(const object* o, index::Tier* out);

  // An engine block hash: int (any sign, read as two's complement) or bin (folded per dialect).
  bool Hash(const object& o, uint64_t* out);

  bool HashList(const object& o, std::vector<uint64_t>* out);

  bool TokenList(const object& o, std::vector<uint32_t>* out, const char* what);

  // Arrays of per-block token arrays (AIBrix, sequence-id form): flattened; every block must
  // have the same length, which becomes the block size.
  bool BlockTokenLists(const object& o, Event* ev, const char* what);

  bool CheckStoredShape(Event& ev);
  // vLLM's extra_keys (nil, or an array with one entry per block): each non-nil entry's
  // msgpack bytes, re-packed, go to ev->extra_keys (left empty when every entry is nil).
  bool ExtraKeys(const object* x, Event* ev);

  bool UnknownTag(std::string_view tag, EventBatch* b);

  // ---- vLLM / SGLang ----------------------------------------------------------------------
  bool VllmBatchArray(const object& root, EventBatch* b);

  bool VllmBatchMap(const object& root, EventBatch* b);

  bool VllmEvents(const object& events, EventBatch* b);

  bool VllmArrayEvent(const object& e, EventBatch* b);

  bool VllmMapEvent(const object& e, EventBatch* b);

  // ---- AIBrix ---------------------------------------------------------------------------
  bool AibrixEvent(const object& e, EventBatch* b);

  // ---- Sequence-id form ---------------------------------------------------------------------
  bool BlockNumbers(const object* o, Event* ev);

  bool SeqEvent(const object& e, EventBatch* b);

  // ---- NVIDIA KVBM --------------------------------------------------------------------------
  // A u128 as bin (16 bytes, big-endian) or an integer; returns (high, low).
  bool U128(const object& o, std::pair<uint64_t, uint64_t>* out, const char* what);

  // A SequenceHash: u128 (folded high ^ low) or {current, parent, position, flags} (current).
  bool KvbmHash(const object& o, wire::LineageHash* out);
  bool KvbmStructField(const object& o, const char* name, uint64_t* out);

  bool KvbmHashes(const object& o, Event* ev);

  bool KvbmVariant(std::string_view name, const object* args, EventBatch* b);

  bool KvbmEvents(const object& o, EventBatch* b);

  bool Kvbm(const object& root, EventBatch* b);

  Dialect dialect_;
  const DecodeLimits& limits_;
  DecodeReason reason_ = DecodeReason::kOk;
  std::string detail_;
};

}  // namespace kvidx::ingest::internal
