#include "ingest/fast_decoder.h"

#include <cstring>
#include <string_view>

#include "ingest/dialect_rules.h"

namespace kvidx::ingest {
namespace {

// A msgpack cursor. Every read checks the bytes left; a failed read sets `bad` and returns a
// neutral value, and the caller falls back.
class Cursor {
 public:
  Cursor(const uint8_t* p, const uint8_t* end) : p_(p), end_(end) {}
  bool bad() const { return bad_; }
  bool done() const { return p_ == end_; }
  size_t left() const { return p_ < end_ ? static_cast<size_t>(end_ - p_) : 0; }
  uint8_t Peek() {
    if (p_ >= end_) return Bad(), 0xc1;
    return *p_;
  }

  bool Nil() {
    if (Peek() == 0xc0) {
      ++p_;
      return true;
    }
    return false;
  }

  // An array header; count bounded by the bytes left (each element takes at least one).
  uint32_t Array() {
    uint8_t b = Peek();
    uint32_t n;
    if ((b & 0xf0) == 0x90) {
      n = b & 0x0f;
      p_ += 1;
    } else if (b == 0xdc) {
      n = Be(1, 2);
      p_ += 3;
    } else if (b == 0xdd) {
      n = Be(1, 4);
      p_ += 5;
    } else {
      return Bad(), 0;
    }
    if (!bad_ && (p_ > end_ || n > static_cast<size_t>(end_ - p_))) return Bad(), 0;
    return n;
  }
  uint32_t Map() {
    uint8_t b = Peek();
    uint32_t n;
    if ((b & 0xf0) == 0x80) {
      n = b & 0x0f;
      p_ += 1;
    } else if (b == 0xde) {
      n = Be(1, 2);
      p_ += 3;
    } else {
      return Bad(), 0;
    }
    if (!bad_ && (p_ > end_ || n > static_cast<size_t>(end_ - p_) / 2)) return Bad(), 0;
    return n;
  }
  bool IsArray() {
    uint8_t b = Peek();
    return (b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd;
  }
  bool IsMap() {
    uint8_t b = Peek();
    return (b & 0xf0) == 0x80 || b == 0xde || b == 0xdf;
  }

  std::string_view Str() {
    uint8_t b = Peek();
    size_t n, h;
    if ((b & 0xe0) == 0xa0) {
      n = b & 0x1f;
      h = 1;
    } else if (b == 0xd9) {
      n = Be(1, 1);
      h = 2;
    } else if (b == 0xda) {
      n = Be(1, 2);
      h = 3;
    } else {
      return Bad(), std::string_view();
    }
    if (bad_ || static_cast<size_t>(end_ - p_) < h + n) return Bad(), std::string_view();
    std::string_view s(reinterpret_cast<const char*>(p_ + h), n);
    p_ += h + n;
    return s;
  }
  bool IsStr() {
    uint8_t b = Peek();
    return (b & 0xe0) == 0xa0 || b == 0xd9 || b == 0xda;
  }

  // Any integer, as two's complement u64; `negative` tells the sign.
  bool Int(uint64_t* v, bool* negative) {
    uint8_t b = Peek();
    *negative = false;
    if (b <= 0x7f) {
      *v = b;
      p_ += 1;
    } else if (b >= 0xe0) {
      *v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(b)));
      *negative = true;
      p_ += 1;
    } else if (b >= 0xcc && b <= 0xcf) {
      size_t w = size_t{1} << (b - 0xcc);
      *v = Be(1, w);
      p_ += 1 + w;
    } else if (b >= 0xd0 && b <= 0xd3) {
      size_t w = size_t{1} << (b - 0xd0);
      uint64_t raw = Be(1, w);
      int shift = static_cast<int>(64 - 8 * w);
      int64_t sv = static_cast<int64_t>(raw << shift) >> shift;
      *v = static_cast<uint64_t>(sv);
      *negative = sv < 0;
      p_ += 1 + w;
    } else {
      return false;
    }
    if (p_ > end_) return Bad(), false;
    return !bad_;
  }
  bool IsInt() {
    uint8_t b = Peek();
    return b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3);
  }

  bool Double(double* d) {
    uint8_t b = Peek();
    if (b == 0xcb) {
      uint64_t raw = Be(1, 8);
      std::memcpy(d, &raw, 8);
      p_ += 9;
    } else if (b == 0xca) {
      uint32_t raw = static_cast<uint32_t>(Be(1, 4));
      float f;
      std::memcpy(&f, &raw, 4);
      *d = f;
      p_ += 5;
    } else {
      uint64_t v;
      bool neg;
      if (!Int(&v, &neg)) return false;
      *d = neg ? static_cast<double>(static_cast<int64_t>(v)) : static_cast<double>(v);
      return true;
    }
    if (p_ > end_) return Bad(), false;
    return !bad_;
  }

  // A block hash: int, or bin folded per dialect.
  bool Hash(uint64_t* out, bool sglang) {
    uint8_t b = Peek();
    if (b == 0xc4 || b == 0xc5) {
      size_t hdr = b == 0xc4 ? 2 : 3;
      size_t n = Be(1, hdr - 1);
      if (bad_ || n == 0 || static_cast<size_t>(end_ - p_) < hdr + n) return Bad(), false;
      const uint8_t* d = p_ + hdr;
      *out = FoldBinaryHash(d, n, sglang);
      p_ += hdr + n;
      return true;
    }
    bool neg;
    return Int(out, &neg);
  }

 private:
  void Bad() { bad_ = true; }
  uint64_t Be(size_t at, size_t w) {
    if (static_cast<size_t>(end_ - p_) < at + w) return Bad(), 0;
    uint64_t v = 0;
    for (size_t i = 0; i < w; ++i) v = (v << 8) | p_[at + i];
    return v;
  }
  const uint8_t* p_;
  const uint8_t* end_;
  bool bad_ = false;
};

class Fast {
 public:
  Fast(Cursor& c, bool sglang, const DecodeLimits& limits)
      : c_(c), sglang_(sglang), limits_(limits) {}

  bool Hashes(std::vector<uint64_t>* out) {
    uint32_t n = c_.Array();
    if (c_.bad() || n > limits_.max_array) return false;
    out->resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      if (!c_.Hash(&(*out)[i], sglang_)) return false;
    }
    return true;
  }
  bool Tokens(std::vector<uint32_t>* out) {
    if (c_.Nil()) return true;
    uint32_t n = c_.Array();
    if (c_.bad() || n > limits_.max_array) return false;
    out->resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      uint64_t v;
      bool neg;
      if (!c_.Int(&v, &neg) || neg || v > 0xFFFFFFFEu) return false;
      (*out)[i] = static_cast<uint32_t>(v);
    }
    return true;
  }
  bool OptInt(std::optional<int64_t>* out) {
    if (c_.Nil()) return true;
    uint64_t v;
    bool neg;
    if (!c_.Int(&v, &neg)) return false;
    if (!neg && v > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(v);
    return true;
  }
  bool OptStr(std::optional<std::string>* out) {
    if (c_.Nil()) return true;
    std::string_view s = c_.Str();
    if (c_.bad()) return false;
    *out = std::string(s);
    return true;
  }
  bool Medium(index::Tier* t) {
    if (c_.Nil()) {
      *t = index::kGpu;
      return true;
    }
    std::string_view s = c_.Str();
    if (c_.bad()) return false;
    *t = TierFromMedium(s);
    return true;
  }
  bool Parent(std::optional<uint64_t>* out) {
    if (c_.Nil()) return true;
    uint64_t v;
    if (!c_.Hash(&v, sglang_)) return false;
    *out = v;
    return true;
  }
  bool BlockSize(uint32_t* out) {
    if (c_.Nil()) return true;
    uint64_t v;
    bool neg;
    if (!c_.Int(&v, &neg) || neg || v > limits_.max_block_size) return false;
    *out = static_cast<uint32_t>(v);
    return true;
  }
  // extra_keys: only nil or an array of nils is taken here (anything richer falls back).
  bool ExtraKeys(bool* present) {
    if (c_.Nil()) return true;
    uint32_t n = c_.Array();
    if (c_.bad()) return false;
    for (uint32_t i = 0; i < n; ++i) {
      if (!c_.Nil()) return false;
    }
    *present = true;
    return true;
  }
  bool Consistent(const Event& e) {
    if (e.tokens.empty()) return true;
    return e.block_size != 0 && e.tokens.size() == e.hashes.size() * e.block_size;
  }

  bool ArrayEvent(Event* e) {
    uint32_t n = c_.Array();
    if (c_.bad() || n == 0 || !c_.IsStr()) return false;
    std::string_view tag = c_.Str();
    if (tag == "BlockStored") {
      if (n < 6 || n > 12) return false;
      e->kind = EventKind::kStored;
      if (!Hashes(&e->hashes) || !Parent(&e->parent) || !Tokens(&e->tokens) ||
          !BlockSize(&e->block_size) || !OptInt(&e->lora_id)) {
        return false;
      }
      if (n > 6 && !Medium(&e->tier)) return false;
      if (n > 7 && !OptStr(&e->lora_name)) return false;  // a map here (SGLang salt): fallback
      if (n > 8 && !ExtraKeys(&e->has_extra_keys)) return false;
      if (n > 9 && !OptInt(&e->group_idx)) return false;
      if (n > 10) {
        std::optional<std::string> kind;
        if (!OptStr(&kind)) return false;
      }
      if (n > 11) {
        std::optional<int64_t> window;
        if (!OptInt(&window)) return false;
      }
      return Consistent(*e);
    }
    if (tag == "BlockRemoved") {
      if (n < 2 || n > 4) return false;
      e->kind = EventKind::kRemoved;
      if (!Hashes(&e->hashes)) return false;
      if (n > 2 && !Medium(&e->tier)) return false;
      if (n > 3 && !OptInt(&e->group_idx)) return false;
      return true;
    }
    if (tag == "AllBlocksCleared") {
      e->kind = EventKind::kCleared;
      return n == 1;
    }
    return false;
  }

  bool MapEvent(Event* e) {
    uint32_t n = c_.Map();
    if (c_.bad() || n == 0 || !c_.IsStr() || c_.Str() != "type" || !c_.IsStr()) return false;
    std::string_view tag = c_.Str();
    if (tag == "BlockStored")
      e->kind = EventKind::kStored;
    else if (tag == "BlockRemoved")
      e->kind = EventKind::kRemoved;
    else if (tag == "AllBlocksCleared")
      e->kind = EventKind::kCleared;
    else
      return false;
    bool has_hashes = false;
    for (uint32_t i = 1; i < n; ++i) {
      if (!c_.IsStr()) return false;
      std::string_view key = c_.Str();
      // A removal takes only its own fields here; anything else goes to the general decoder.
      if (e->kind == EventKind::kRemoved && key != "block_hashes" && key != "medium" &&
          key != "group_idx") {
        return false;
      }
      bool ok;
      if (key == "block_hashes")
        ok = has_hashes = Hashes(&e->hashes);
      else if (key == "parent_block_hash")
        ok = Parent(&e->parent);
      else if (key == "token_ids")
        ok = Tokens(&e->tokens);
      else if (key == "block_size")
        ok = BlockSize(&e->block_size);
      else if (key == "lora_id")
        ok = OptInt(&e->lora_id);
      else if (key == "medium")
        ok = Medium(&e->tier);
      else if (key == "lora_name")
        ok = OptStr(&e->lora_name);
      else if (key == "extra_keys")
        ok = ExtraKeys(&e->has_extra_keys);
      else if (key == "group_idx")
        ok = OptInt(&e->group_idx);
      else if (key == "kv_cache_spec_kind") {
        std::optional<std::string> kind;
        ok = OptStr(&kind);
      } else {
        return false;  // anything else: the general decoder
      }
      if (!ok) return false;
    }
    if (e->kind == EventKind::kCleared) return n == 1;
    return has_hashes && Consistent(*e);
  }

 private:
  Cursor& c_;
  bool sglang_;
  const DecodeLimits& limits_;
};

}  // namespace

FastResult FastDecodeBatch(std::span<const uint8_t> payload, Dialect dialect, EventBatch* out,
                           const DecodeLimits& limits) {
  if (dialect != Dialect::kAuto && dialect != Dialect::kVllm && dialect != Dialect::kSglang) {
    return FastResult::kFallback;
  }
  if (payload.empty() || payload.size() > limits.max_payload_bytes) return FastResult::kFallback;
  Cursor c(payload.data(), payload.data() + payload.size());
  uint32_t n = c.Array();
  if (c.bad() || n < 2 || n > 3) return FastResult::kFallback;
  EventBatch& b = *out;
  b.events.clear();
  b.dp_rank.reset();
  b.unknown_events = 0;
  b.instance_id.reset();
  if (!c.Double(&b.ts)) return FastResult::kFallback;
  if (!c.IsArray()) return FastResult::kFallback;
  uint32_t events = c.Array();
  // An event takes at least kMinEventBytes (a container header, a tag of 11 or more characters
  // and its fields), so a header claiming more events than the bytes left can hold goes to the
  // general decoder, which refuses it before allocating: the events allocated here are at most
  // one per kMinEventBytes payload bytes.
  constexpr size_t kMinEventBytes = 14;
  if (c.bad() || events > limits.max_array || events > c.left() / kMinEventBytes) {
    return FastResult::kFallback;
  }
  const bool sglang = dialect == Dialect::kSglang;
  Fast f(c, sglang, limits);
  b.events.resize(events);
  for (uint32_t i = 0; i < events; ++i) {
    bool ok = c.IsArray() ? f.ArrayEvent(&b.events[i]) : c.IsMap() && f.MapEvent(&b.events[i]);
    if (!ok || c.bad()) return FastResult::kFallback;
  }
  if (n == 3) {
    if (!c.Nil()) {
      uint64_t v;
      bool neg;
      if (!c.Int(&v, &neg) || (!neg && v > static_cast<uint64_t>(INT64_MAX))) {
        return FastResult::kFallback;
      }
      b.dp_rank = static_cast<int64_t>(v);
    }
  }
  if (c.bad() || !c.done()) return FastResult::kFallback;
  b.dialect = sglang ? Dialect::kSglang : Dialect::kVllm;
  return FastResult::kOk;
}

}  // namespace kvidx::ingest
