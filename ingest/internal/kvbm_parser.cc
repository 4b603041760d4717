// NVIDIA KVBM (Dynamo) events: rmp-serde named and indexed forms, and serde_json.
#include "absl/strings/str_cat.h"

#include "ingest/internal/object_parser.h"

namespace kvidx::ingest::internal {

bool Parser::LooksKvbm(const object& root) {
  if (root.via.array.size != 2) return false;
  const object& ev = root.via.array.ptr[0];
  const object& id = root.via.array.ptr[1];
  if (!(IsInt(id) || id.type == t::BIN)) return false;
  if (ev.type == t::STR) return Str(ev) == "Shutdown";
  if (ev.type == t::MAP && ev.via.map.size == 1 && ev.via.map.ptr[0].key.type == t::STR) {
    auto k = Str(ev.via.map.ptr[0].key);
    return k == "Create" || k == "Remove" || k == "Shutdown";
  }
  return ev.type == t::ARRAY && ev.via.array.size == 2 && IsInt(ev.via.array.ptr[0]) &&
         ev.via.array.ptr[1].type == t::ARRAY;
}

bool Parser::U128(const object& o, std::pair<uint64_t, uint64_t>* out, const char* what) {
  if (o.type == t::POSITIVE_INTEGER) {
    *out = {0, o.via.u64};
    return true;
  }
  if (o.type == t::BIN && o.via.bin.size <= 16 && o.via.bin.size > 0) {
    *out = wire::U128FromBigEndian(reinterpret_cast<const uint8_t*>(o.via.bin.ptr), o.via.bin.size);
    return true;
  }
  return Fail(DecodeReason::kWrongType, absl::StrCat(what, " is not a u128"));
}

bool Parser::KvbmStructField(const object& o, const char* name, uint64_t* out) {
  if (o.type != t::POSITIVE_INTEGER) {
    return Fail(DecodeReason::kWrongType, absl::StrCat("SequenceHash.", name, " is not a u64"));
  }
  *out = o.via.u64;
  return true;
}

// One SequenceHash: the u128 form (bin 16 or an integer) or the struct form (array in field
// order, or map): {current, parent, position, flags}.
bool Parser::KvbmHash(const object& o, wire::LineageHash* out) {
  std::optional<wire::LineageHash> h;
  if (o.type == t::ARRAY || o.type == t::MAP) {
    const bool arr = o.type == t::ARRAY;
    const object* f[3] = {nullptr, nullptr, nullptr};
    static constexpr const char* kFields[3] = {"current", "parent", "position"};
    for (int i = 0; i < 3; ++i) {
      f[i] = arr ? (o.via.array.size > static_cast<uint32_t>(i) ? &o.via.array.ptr[i] : nullptr)
                 : Get(o, kFields[i]);
      if (f[i] == nullptr) {
        return Fail(DecodeReason::kBadShape,
                    absl::StrCat("SequenceHash struct without ", kFields[i]));
      }
    }
    uint64_t v[3];
    for (int i = 0; i < 3; ++i) {
      if (!KvbmStructField(*f[i], kFields[i], &v[i])) return false;
    }
    if (v[2] > wire::kMaxLineagePosition) {
      return Fail(DecodeReason::kBadShape, "SequenceHash.position past 2^24 - 1");
    }
    h = wire::CanonicalLineageHash(v[0], v[1], static_cast<uint32_t>(v[2]));
  } else {
    std::pair<uint64_t, uint64_t> v;
    if (!U128(o, &v, "SequenceHash")) return false;
    h = wire::UnpackLineageHash(v.first, v.second);
    if (!h) return Fail(DecodeReason::kBadShape, "SequenceHash of mode 3");
  }
  *out = *h;
  return true;
}

bool Parser::KvbmHashes(const object& o, Event* ev) {
  if (o.type != t::ARRAY) return Fail(DecodeReason::kWrongType, "KVBM hashes are not an array");
  ev->hashes.resize(o.via.array.size);
  ev->positions.resize(o.via.array.size);
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    wire::LineageHash h;
    if (!KvbmHash(o.via.array.ptr[i], &h)) return false;
    ev->hashes[i] = wire::LineageEngineHash(h);
    ev->positions[i] = h.position;
  }
  return true;
}

bool Parser::KvbmVariant(std::string_view name, const object* args, EventBatch* b) {
  Event ev;
  if (name == "Shutdown") {
    ev.kind = EventKind::kCleared;
  } else if (name == "Create" || name == "Remove") {
    ev.kind = name == "Create" ? EventKind::kStored : EventKind::kRemoved;
    if (args == nullptr) return Fail(DecodeReason::kBadShape, "KVBM variant without hashes");
    if (!KvbmHashes(*args, &ev)) return false;
  } else {
    return UnknownTag(name, b);
  }
  b->events.push_back(std::move(ev));
  return true;
}

bool Parser::KvbmEvents(const object& o, EventBatch* b) {
  if (o.type == t::STR) return KvbmVariant(Str(o), nullptr, b);
  if (o.type == t::MAP) {
    if (o.via.map.size != 1 || o.via.map.ptr[0].key.type != t::STR) {
      return Fail(DecodeReason::kBadShape, "KVBM events map is not one variant");
    }
    return KvbmVariant(Str(o.via.map.ptr[0].key), &o.via.map.ptr[0].val, b);
  }
  if (o.type == t::ARRAY && o.via.array.size == 2 &&
      o.via.array.ptr[0].type == t::POSITIVE_INTEGER && o.via.array.ptr[1].type == t::ARRAY) {
    // Older rmp-serde: [variant_index, [args...]]; a newtype variant's args hold the vector.
    static constexpr const char* kNames[] = {"Create", "Remove", "Shutdown"};
    uint64_t idx = o.via.array.ptr[0].via.u64;
    if (idx > 2) return UnknownTag(absl::StrCat("variant ", idx), b);
    const object& args = o.via.array.ptr[1];
    const object* inner = args.via.array.size > 0 ? &args.via.array.ptr[0] : nullptr;
    return KvbmVariant(kNames[idx], inner, b);
  }
  return Fail(DecodeReason::kBadShape, "KVBM events of no known encoding");
}

bool Parser::Kvbm(const object& root, EventBatch* b) {
  b->dialect = Dialect::kKvbm;
  const object* events = nullptr;
  const object* id = nullptr;
  if (root.type == t::ARRAY) {
    if (root.via.array.size < 2) return Fail(DecodeReason::kBadShape, "KvbmCacheEvents array < 2");
    events = &root.via.array.ptr[0];
    id = &root.via.array.ptr[1];
  } else {
    events = Get(root, "events");
    id = Get(root, "instance_id");
    if (events == nullptr || id == nullptr) {
      return Fail(DecodeReason::kBadShape, "KvbmCacheEvents without events or instance_id");
    }
  }
  std::pair<uint64_t, uint64_t> inst;
  if (!U128(*id, &inst, "instance_id")) return false;
  b->instance_id = inst;
  return KvbmEvents(*events, b);
}

}  // namespace kvidx::ingest::internal
