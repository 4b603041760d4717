#include "ingest/internal/object_parser.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvidx::ingest::internal {

bool Parser::Fail(DecodeReason r, std::string detail) {
  if (reason_ == DecodeReason::kOk) {
    reason_ = r;
    detail_ = std::move(detail);
  }
  return false;
}

bool Parser::Root(const object& root, EventBatch* b) {
  if (root.type == t::ARRAY) {
    if (dialect_ == Dialect::kKvbm || (dialect_ == Dialect::kAuto && LooksKvbm(root))) {
      return Kvbm(root, b);
    }
    return VllmBatchArray(root, b);
  }
  if (root.type != t::MAP) return Fail(DecodeReason::kBadShape, "batch is neither array nor map");
  if (dialect_ == Dialect::kKvbm || Get(root, "instance_id") != nullptr) return Kvbm(root, b);
  if (Get(root, "ts") != nullptr && dialect_ != Dialect::kAibrix && dialect_ != Dialect::kSeqId) {
    return VllmBatchMap(root, b);
  }
  const object* events = Get(root, "events");
  if (events != nullptr) {
    if (events->type != t::ARRAY) return Fail(DecodeReason::kWrongType, "events is not an array");
    bool aibrix = dialect_ == Dialect::kAibrix ||
                  (dialect_ != Dialect::kSeqId && events->via.array.size > 0 &&
                   LooksAibrix(events->via.array.ptr[0]));
    b->dialect = aibrix ? Dialect::kAibrix : Dialect::kSeqId;
    for (uint32_t i = 0; i < events->via.array.size; ++i) {
      bool ok =
          aibrix ? AibrixEvent(events->via.array.ptr[i], b) : SeqEvent(events->via.array.ptr[i], b);
      if (!ok) return false;
    }
    return true;
  }
  // A lone sequence-id event.
  b->dialect = Dialect::kSeqId;
  return SeqEvent(root, b);
}

bool Parser::LooksAibrix(const object& ev) {
  if (ev.type != t::MAP) return false;
  const object* type = Get(ev, "type");
  if (type == nullptr || type->type != t::STR) return false;
  auto s = Str(*type);
  return s == "BLOCK_STORED" || s == "BLOCK_REMOVED" || s == "ALL_BLOCKS_CLEARED";
}

bool Parser::Number(const object& o, double* out, const char* what) {
  if (o.type == t::FLOAT64 || o.type == t::FLOAT32)
    *out = o.via.f64;
  else if (o.type == t::POSITIVE_INTEGER)
    *out = static_cast<double>(o.via.u64);
  else if (o.type == t::NEGATIVE_INTEGER)
    *out = static_cast<double>(o.via.i64);
  else
    return Fail(DecodeReason::kWrongType, absl::StrCat(what, " is not a number"));
  return true;
}

bool Parser::Int(const object& o, int64_t* out, const char* what) {
  if (o.type == t::POSITIVE_INTEGER && o.via.u64 <= static_cast<uint64_t>(INT64_MAX)) {
    *out = static_cast<int64_t>(o.via.u64);
  } else if (o.type == t::NEGATIVE_INTEGER) {
    *out = o.via.i64;
  } else {
    return Fail(DecodeReason::kWrongType, absl::StrCat(what, " is not an integer"));
  }
  return true;
}

bool Parser::OptInt(const object* o, std::optional<int64_t>* out, const char* what) {
  if (o == nullptr || o->type == t::NIL) return true;
  int64_t v;
  if (!Int(*o, &v, what)) return false;
  *out = v;
  return true;
}

bool Parser::OptStr(const object* o, std::optional<std::string>* out, const char* what) {
  if (o == nullptr || o->type == t::NIL) return true;
  if (o->type != t::STR)
    return Fail(DecodeReason::kWrongType, absl::StrCat(what, " is not a string"));
  *out = std::string(Str(*o));
  return true;
}

bool Parser::Medium(const object* o, index::Tier* out) {
  std::optional<std::string> m;
  if (!OptStr(o, &m, "medium")) return false;
  *out = m ? TierFromMedium(*m) : index::kGpu;
  return true;
}

bool Parser::Hash(const object& o, uint64_t* out) {
  if (o.type == t::POSITIVE_INTEGER) {
    *out = o.via.u64;
  } else if (o.type == t::NEGATIVE_INTEGER) {
    *out = static_cast<uint64_t>(o.via.i64);
  } else if (o.type == t::BIN) {
    const auto* p = reinterpret_cast<const uint8_t*>(o.via.bin.ptr);
    uint32_t n = o.via.bin.size;
    if (n == 0) return Fail(DecodeReason::kWrongType, "empty binary block hash");
    *out = FoldBinaryHash(p, n, dialect_ == Dialect::kSglang);
  } else {
    return Fail(DecodeReason::kWrongType, "block hash is neither integer nor binary");
  }
  return true;
}

bool Parser::HashList(const object& o, std::vector<uint64_t>* out) {
  if (o.type != t::ARRAY) return Fail(DecodeReason::kWrongType, "block_hashes is not an array");
  out->resize(o.via.array.size);
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    if (!Hash(o.via.array.ptr[i], &(*out)[i])) return false;
  }
  return true;
}

bool Parser::TokenList(const object& o, std::vector<uint32_t>* out, const char* what) {
  if (o.type == t::NIL) return true;
  if (o.type != t::ARRAY)
    return Fail(DecodeReason::kWrongType, absl::StrCat(what, " is not an array"));
  out->reserve(out->size() + o.via.array.size);
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    const object& e = o.via.array.ptr[i];
    if (e.type != t::POSITIVE_INTEGER || e.via.u64 > 0xFFFFFFFEu) {
      return Fail(DecodeReason::kWrongType, absl::StrCat(what, " holds a non-token value"));
    }
    out->push_back(static_cast<uint32_t>(e.via.u64));
  }
  return true;
}

bool Parser::BlockTokenLists(const object& o, Event* ev, const char* what) {
  if (o.type != t::ARRAY)
    return Fail(DecodeReason::kWrongType, absl::StrCat(what, " is not an array"));
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    size_t before = ev->tokens.size();
    if (o.via.array.ptr[i].type != t::ARRAY) {
      return Fail(DecodeReason::kWrongType, absl::StrCat(what, " holds a non-array"));
    }
    if (!TokenList(o.via.array.ptr[i], &ev->tokens, what)) return false;
    uint32_t len = static_cast<uint32_t>(ev->tokens.size() - before);
    if (i == 0) ev->block_size = len;
    if (len != ev->block_size || len == 0) {
      return Fail(DecodeReason::kBadShape, absl::StrCat(what, ": blocks of unequal or zero size"));
    }
  }
  return true;
}

bool Parser::CheckStoredShape(Event& ev) {
  if (ev.block_size > limits_.max_block_size) {
    return Fail(DecodeReason::kTooLarge, absl::StrCat("block_size ", ev.block_size));
  }
  if (!ev.tokens.empty()) {
    if (ev.block_size == 0 || ev.tokens.size() != ev.hashes.size() * ev.block_size) {
      return Fail(DecodeReason::kBadShape,
                  absl::StrCat(ev.tokens.size(), " token ids for ", ev.hashes.size(), " blocks of ",
                               ev.block_size));
    }
  }
  return true;
}

bool Parser::ExtraKeys(const object* x, Event* ev) {
  // One block's extra keys are a few hashes and names; more is not an engine's.
  constexpr size_t kMaxExtraBytes = 4096;
  if (x == nullptr || x->type == t::NIL) return true;
  if (x->type != t::ARRAY) return Fail(DecodeReason::kWrongType, "extra_keys is not an array");
  ev->has_extra_keys = true;
  const auto& a = x->via.array;
  bool any = false;
  for (uint32_t i = 0; i < a.size && !any; ++i) any = a.ptr[i].type != t::NIL;
  if (!any) return true;  // nothing to key (the fast decoder takes these too)
  if (a.size != ev->hashes.size()) {
    return Fail(DecodeReason::kBadShape, absl::StrCat("extra_keys has ", a.size, " entries for ",
                                                      ev->hashes.size(), " blocks"));
  }
  ev->extra_keys.resize(a.size);
  for (uint32_t i = 0; i < a.size; ++i) {
    if (a.ptr[i].type == t::NIL) continue;
    msgpack::sbuffer buf;
    msgpack::pack(buf, a.ptr[i]);
    if (buf.size() > kMaxExtraBytes) {
      return Fail(DecodeReason::kTooLarge, absl::StrCat("extra_keys entry of ", buf.size(),
                                                        " bytes (at most ", kMaxExtraBytes, ")"));
    }
    ev->extra_keys[i].assign(buf.data(), buf.size());
  }
  return true;
}

bool Parser::UnknownTag(std::string_view tag, EventBatch* b) {
  if (limits_.strict)
    return Fail(DecodeReason::kUnknownTag, absl::StrCat("unknown event '", std::string(tag), "'"));
  ++b->unknown_events;
  return true;
}

bool Parser::VllmBatchArray(const object& root, EventBatch* b) {
  const auto& a = root.via.array;
  if (a.size < 2) return Fail(DecodeReason::kBadShape, "batch array has fewer than 2 elements");
  if (!Number(a.ptr[0], &b->ts, "ts")) return false;
  if (a.size >= 3 && !OptInt(&a.ptr[2], &b->dp_rank, "data_parallel_rank")) return false;
  return VllmEvents(a.ptr[1], b);
}

bool Parser::VllmBatchMap(const object& root, EventBatch* b) {
  const object* ts = Get(root, "ts");
  const object* events = Get(root, "events");
  if (events == nullptr) return Fail(DecodeReason::kBadShape, "batch map has no events");
  if (!Number(*ts, &b->ts, "ts")) return false;
  const object* dp = Get(root, "data_parallel_rank");
  if (dp == nullptr) dp = Get(root, "attn_dp_rank");
  if (!OptInt(dp, &b->dp_rank, "data_parallel_rank")) return false;
  return VllmEvents(*events, b);
}

bool Parser::VllmEvents(const object& events, EventBatch* b) {
  if (events.type != t::ARRAY) return Fail(DecodeReason::kWrongType, "events is not an array");
  b->dialect = dialect_ == Dialect::kSglang ? Dialect::kSglang : Dialect::kVllm;
  b->events.reserve(events.via.array.size);
  for (uint32_t i = 0; i < events.via.array.size; ++i) {
    const object& e = events.via.array.ptr[i];
    bool ok = e.type == t::ARRAY ? VllmArrayEvent(e, b)
              : e.type == t::MAP ? VllmMapEvent(e, b)
                                 : Fail(DecodeReason::kWrongType, "event is neither array nor map");
    if (!ok) return false;
  }
  return true;
}

bool Parser::VllmArrayEvent(const object& e, EventBatch* b) {
  const auto& a = e.via.array;
  if (a.size == 0 || a.ptr[0].type != t::STR) {
    return Fail(DecodeReason::kBadShape, "array event without a tag string");
  }
  std::string_view tag = Str(a.ptr[0]);
  auto at = [&](uint32_t i) -> const object* { return i < a.size ? &a.ptr[i] : nullptr; };
  Event ev;
  if (tag == "BlockStored" || tag == "BlockStoredWithMetadata") {
    if (a.size < 6) return Fail(DecodeReason::kBadShape, "BlockStored has fewer than 6 fields");
    ev.kind = EventKind::kStored;
    if (!HashList(a.ptr[1], &ev.hashes)) return false;
    if (a.ptr[2].type != t::NIL) {
      uint64_t p;
      if (!Hash(a.ptr[2], &p)) return false;
      ev.parent = p;
    }
    if (!TokenList(a.ptr[3], &ev.tokens, "token_ids")) return false;
    int64_t bs = 0;
    if (a.ptr[4].type != t::NIL && !Int(a.ptr[4], &bs, "block_size")) return false;
    if (bs < 0) return Fail(DecodeReason::kBadShape, "negative block_size");
    ev.block_size = static_cast<uint32_t>(std::min<int64_t>(bs, UINT32_MAX));
    if (!OptInt(at(5), &ev.lora_id, "lora_id")) return false;
    if (!Medium(at(6), &ev.tier)) return false;
    if (const object* o7 = at(7); o7 != nullptr && o7->type == t::MAP) {
      // SGLang's BlockStoredWithMetadata: {"cache_salt": ...} where vLLM has lora_name.
      if (!OptStr(Get(*o7, "cache_salt"), &ev.cache_salt, "cache_salt")) return false;
    } else if (!OptStr(o7, &ev.lora_name, "lora_name")) {
      return false;
    }
    if (!ExtraKeys(at(8), &ev)) return false;
    if (!OptInt(at(9), &ev.group_idx, "group_idx")) return false;
    if (!CheckStoredShape(ev)) return false;
  } else if (tag == "BlockRemoved") {
    if (a.size < 2) return Fail(DecodeReason::kBadShape, "BlockRemoved has no block_hashes");
    ev.kind = EventKind::kRemoved;
    if (!HashList(a.ptr[1], &ev.hashes)) return false;
    if (!Medium(at(2), &ev.tier)) return false;
    if (!OptInt(at(3), &ev.group_idx, "group_idx")) return false;
  } else if (tag == "AllBlocksCleared") {
    ev.kind = EventKind::kCleared;
  } else {
    return UnknownTag(tag, b);
  }
  b->events.push_back(std::move(ev));
  return true;
}

bool Parser::VllmMapEvent(const object& e, EventBatch* b) {
  const object* type = Get(e, "type");
  if (type == nullptr || type->type != t::STR) {
    return Fail(DecodeReason::kBadShape, "map event without a type string");
  }
  std::string_view tag = Str(*type);
  Event ev;
  if (tag == "BlockStored" || tag == "BlockStoredWithMetadata") {
    ev.kind = EventKind::kStored;
    const object* hashes = Get(e, "block_hashes");
    if (hashes == nullptr) return Fail(DecodeReason::kBadShape, "BlockStored without block_hashes");
    if (!HashList(*hashes, &ev.hashes)) return false;
    if (const object* p = Get(e, "parent_block_hash"); p != nullptr && p->type != t::NIL) {
      uint64_t v;
      if (!Hash(*p, &v)) return false;
      ev.parent = v;
    }
    if (const object* tk = Get(e, "token_ids"); tk != nullptr) {
      if (!TokenList(*tk, &ev.tokens, "token_ids")) return false;
    }
    std::optional<int64_t> bs;
    if (!OptInt(Get(e, "block_size"), &bs, "block_size")) return false;
    if (bs && *bs < 0) return Fail(DecodeReason::kBadShape, "negative block_size");
    ev.block_size = bs ? static_cast<uint32_t>(std::min<int64_t>(*bs, UINT32_MAX)) : 0;
    if (!OptInt(Get(e, "lora_id"), &ev.lora_id, "lora_id")) return false;
    if (!Medium(Get(e, "medium"), &ev.tier)) return false;
    if (!OptStr(Get(e, "lora_name"), &ev.lora_name, "lora_name")) return false;
    if (!OptStr(Get(e, "cache_salt"), &ev.cache_salt, "cache_salt")) return false;
    if (!ExtraKeys(Get(e, "extra_keys"), &ev)) return false;
    if (!OptInt(Get(e, "group_idx"), &ev.group_idx, "group_idx")) return false;
    if (!CheckStoredShape(ev)) return false;
  } else if (tag == "BlockRemoved") {
    ev.kind = EventKind::kRemoved;
    const object* hashes = Get(e, "block_hashes");
    if (hashes == nullptr)
      return Fail(DecodeReason::kBadShape, "BlockRemoved without block_hashes");
    if (!HashList(*hashes, &ev.hashes)) return false;
    if (!Medium(Get(e, "medium"), &ev.tier)) return false;
    if (!OptInt(Get(e, "group_idx"), &ev.group_idx, "group_idx")) return false;
  } else if (tag == "AllBlocksCleared") {
    ev.kind = EventKind::kCleared;
  } else {
    return UnknownTag(tag, b);
  }
  b->events.push_back(std::move(ev));
  return true;
}

bool Parser::AibrixEvent(const object& e, EventBatch* b) {
  if (e.type != t::MAP) return Fail(DecodeReason::kWrongType, "AIBrix event is not a map");
  const object* type = Get(e, "type");
  if (type == nullptr || type->type != t::STR) {
    return Fail(DecodeReason::kBadShape, "AIBrix event without a type");
  }
  std::string_view tag = Str(*type);
  Event ev;
  std::optional<std::string> model;
  if (!OptStr(Get(e, "model_name"), &model, "model_name")) return false;
  if (model) ev.model_name = *model;
  if (tag == "BLOCK_STORED") {
    ev.kind = EventKind::kStored;
    const object* hashes = Get(e, "block_hashes");
    if (hashes == nullptr)
      return Fail(DecodeReason::kBadShape, "BLOCK_STORED without block_hashes");
    if (!HashList(*hashes, &ev.hashes)) return false;
    if (const object* tk = Get(e, "token_ids"); tk != nullptr && tk->type != t::NIL) {
      if (!BlockTokenLists(*tk, &ev, "token_ids")) return false;
      if (tk->via.array.size != ev.hashes.size()) {
        return Fail(DecodeReason::kBadShape, "token_ids: not one array per block");
      }
    }
    if (const object* p = Get(e, "parent_block_hash"); p != nullptr && p->type != t::NIL) {
      uint64_t v;
      if (!Hash(*p, &v)) return false;
      ev.parent = v;
    }
    if (!CheckStoredShape(ev)) return false;
  } else if (tag == "BLOCK_REMOVED") {
    ev.kind = EventKind::kRemoved;
    const object* hashes = Get(e, "block_hashes");
    if (hashes == nullptr)
      return Fail(DecodeReason::kBadShape, "BLOCK_REMOVED without block_hashes");
    if (!HashList(*hashes, &ev.hashes)) return false;
  } else if (tag == "ALL_BLOCKS_CLEARED") {
    ev.kind = EventKind::kCleared;
  } else {
    return UnknownTag(tag, b);
  }
  b->events.push_back(std::move(ev));
  return true;
}

bool Parser::BlockNumbers(const object* o, Event* ev) {
  if (o == nullptr) return Fail(DecodeReason::kBadShape, "block_numbers missing");
  if (o->type != t::ARRAY) return Fail(DecodeReason::kWrongType, "block_numbers is not an array");
  for (uint32_t i = 0; i < o->via.array.size; ++i) {
    const object& n = o->via.array.ptr[i];
    if (n.type != t::POSITIVE_INTEGER || n.via.u64 > 0xFFFFFF) {
      return Fail(DecodeReason::kWrongType, "block number is not a small non-negative integer");
    }
    ev->block_numbers.push_back(static_cast<uint32_t>(n.via.u64));
  }
  return true;
}

bool Parser::SeqEvent(const object& e, EventBatch* b) {
  if (e.type != t::MAP) return Fail(DecodeReason::kWrongType, "sequence event is not a map");
  std::string_view tag;
  if (const object* type = Get(e, "type"); type != nullptr) {
    if (type->type != t::STR) return Fail(DecodeReason::kWrongType, "type is not a string");
    tag = Str(*type);
  } else if (Get(e, "block_token_ids") != nullptr) {
    tag = "block_stored";
  } else if (Get(e, "request_id") != nullptr) {
    tag = "request_finished";
  } else if (Get(e, "block_numbers") != nullptr) {
    tag = "block_removed";
  } else if (Get(e, "sequence_id") == nullptr) {
    tag = "cache_cleared";
  } else {
    return Fail(DecodeReason::kBadShape, "sequence event of no known kind");
  }
  Event ev;
  auto seq_id = [&]() {
    const object* s = Get(e, "sequence_id");
    if (s == nullptr) return Fail(DecodeReason::kBadShape, "sequence_id missing");
    return Int(*s, &ev.sequence_id, "sequence_id");
  };
  if (tag == "block_stored") {
    ev.kind = EventKind::kSeqStored;
    if (!seq_id() || !BlockNumbers(Get(e, "block_numbers"), &ev)) return false;
    const object* tk = Get(e, "block_token_ids");
    if (tk == nullptr) return Fail(DecodeReason::kBadShape, "block_token_ids missing");
    if (!BlockTokenLists(*tk, &ev, "block_token_ids")) return false;
    if (tk->via.array.size != ev.block_numbers.size()) {
      return Fail(DecodeReason::kBadShape, "block_token_ids: not one array per block number");
    }
    if (ev.block_size > limits_.max_block_size) return Fail(DecodeReason::kTooLarge, "block size");
  } else if (tag == "block_removed") {
    ev.kind = EventKind::kSeqRemoved;
    if (!seq_id() || !BlockNumbers(Get(e, "block_numbers"), &ev)) return false;
  } else if (tag == "request_finished") {
    ev.kind = EventKind::kRequestFinished;
    if (!seq_id()) return false;
    std::optional<std::string> rid;
    if (!OptStr(Get(e, "request_id"), &rid, "request_id")) return false;
    ev.request_id = rid.value_or("");
    if (const object* f = Get(e, "finished"); f != nullptr) {
      if (f->type != t::BOOLEAN) return Fail(DecodeReason::kWrongType, "finished is not a bool");
      ev.finished = f->via.boolean;
    }
  } else if (tag == "cache_cleared") {
    ev.kind = EventKind::kCleared;
  } else {
    return UnknownTag(tag, b);
  }
  b->events.push_back(std::move(ev));
  return true;
}

}  // namespace kvidx::ingest::internal
