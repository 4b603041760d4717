#include "ingest/json_to_msgpack.h"

#include <cstring>

#include <msgpack.hpp>

namespace kvidx::ingest {
namespace {

// KVBM sends 128-bit ids; GCC's 128-bit integers are an extension (-Wpedantic says so).
__extension__ using U128 = unsigned __int128;
__extension__ using I128 = __int128;

class Converter {
 public:
  Converter(std::span<const uint8_t> in, int max_depth)
      : p_(in.data()), end_(in.data() + in.size()), max_depth_(max_depth), pk_(buf_) {}

  bool Run(std::vector<uint8_t>* out, std::string* error) {
    bool ok = Value(0);
    Skip();
    if (ok && p_ != end_) ok = Fail("trailing bytes after the JSON document");
    if (!ok) {
      *error = error_;
      return false;
    }
    out->assign(buf_.data(), buf_.data() + buf_.size());
    return true;
  }

 private:
  bool Fail(const char* why) {
    if (error_.empty()) error_ = why;
    return false;
  }
  void Skip() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool Literal(const char* word) {
    size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) {
      return Fail("unknown literal");
    }
    p_ += n;
    return true;
  }

  bool Value(int depth) {
    if (depth > max_depth_) return Fail("JSON nested too deep");
    Skip();
    if (p_ == end_) return Fail("truncated JSON");
    switch (*p_) {
      case '{':
        return Object(depth);
      case '[':
        return Array(depth);
      case '"': {
        std::string s;
        if (!String(&s)) return false;
        pk_.pack(s);
        return true;
      }
      case 't':
        if (!Literal("true")) return false;
        pk_.pack_true();
        return true;
      case 'f':
        if (!Literal("false")) return false;
        pk_.pack_false();
        return true;
      case 'n':
        if (!Literal("null")) return false;
        pk_.pack_nil();
        return true;
      default:
        return Number();
    }
  }

  bool Object(int depth) { return Container(depth, /*object=*/true); }
  bool Array(int depth) { return Container(depth, /*object=*/false); }

  // Objects and arrays: elements go to a nested buffer first, because the header needs their
  // count.
  bool Container(int depth, bool object) {
    const uint8_t close = object ? '}' : ']';
    ++p_;
    Converter inner(std::span<const uint8_t>(p_, end_), max_depth_);
    uint32_t n = 0;
    inner.Skip();
    if (inner.p_ < end_ && *inner.p_ == close) {
      ++inner.p_;
    } else {
      for (;;) {
        if (object) {
          inner.Skip();
          std::string key;
          if (inner.p_ == end_ || *inner.p_ != '"' || !inner.String(&key)) {
            return Fail(inner.error_.empty() ? "object key is not a string" : inner.error_.c_str());
          }
          inner.pk_.pack(key);
          inner.Skip();
          if (inner.p_ == end_ || *inner.p_ != ':') return Fail("missing ':' in object");
          ++inner.p_;
        }
        if (!inner.Value(depth + 1)) return Fail(inner.error_.c_str());
        ++n;
        inner.Skip();
        if (inner.p_ < end_ && *inner.p_ == ',') {
          ++inner.p_;
          continue;
        }
        if (inner.p_ < end_ && *inner.p_ == close) {
          ++inner.p_;
          break;
        }
        return Fail(object ? "missing ',' or '}' in object" : "missing ',' or ']' in array");
      }
    }
    if (object)
      pk_.pack_map(n);
    else
      pk_.pack_array(n);
    buf_.write(inner.buf_.data(), inner.buf_.size());
    p_ = inner.p_;
    return true;
  }

  bool String(std::string* out) {
    ++p_;  // opening quote
    while (p_ < end_ && *p_ != '"') {
      uint8_t c = *p_++;
      if (c != '\\') {
        out->push_back(static_cast<char>(c));
        continue;
      }
      if (p_ == end_) return Fail("truncated escape");
      uint8_t e = *p_++;
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(static_cast<char>(e));
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          if (end_ - p_ < 4) return Fail("truncated \\u escape");
          uint32_t cp = 0;
          for (int i = 0; i < 4; ++i) {
            uint8_t h = *p_++;
            cp <<= 4;
            if (h >= '0' && h <= '9')
              cp |= h - '0';
            else if (h >= 'a' && h <= 'f')
              cp |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F')
              cp |= h - 'A' + 10;
            else
              return Fail("bad \\u escape");
          }
          if (cp < 0x80) {
            out->push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          break;
        }
        default:
          return Fail("unknown escape");
      }
    }
    if (p_ == end_) return Fail("unterminated string");
    ++p_;
    return true;
  }

  // Integers only (KVBM sends no floats); up to 128 bits unsigned, 64 bits negative.
  bool Number() {
    bool negative = false;
    if (*p_ == '-') {
      negative = true;
      ++p_;
    }
    U128 v = 0;
    constexpr U128 kMax = ~static_cast<U128>(0);
    int digits = 0;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      uint8_t d = *p_++ - '0';
      if (v > (kMax - d) / 10) return Fail("integer over 128 bits");
      v = v * 10 + d;
      ++digits;
    }
    if (digits == 0) return Fail("not a JSON value");
    if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) return Fail("non-integer number");
    if (negative) {
      if (v > (static_cast<U128>(1) << 63)) return Fail("negative integer under -2^63");
      pk_.pack(static_cast<int64_t>(-static_cast<I128>(v)));
    } else if (v >> 64 == 0) {
      pk_.pack(static_cast<uint64_t>(v));
    } else {
      char b[16];
      for (int i = 15; i >= 0; --i) {
        b[i] = static_cast<char>(static_cast<uint8_t>(v));
        v >>= 8;
      }
      pk_.pack_bin(16);
      pk_.pack_bin_body(b, 16);
    }
    return true;
  }

  const uint8_t* p_;
  const uint8_t* end_;
  int max_depth_;
  msgpack::sbuffer buf_;
  msgpack::packer<msgpack::sbuffer> pk_;
  std::string error_;
};

}  // namespace

bool JsonToMsgpack(std::span<const uint8_t> json, std::vector<uint8_t>* out, std::string* error,
                   int max_depth) {
  Converter c(json, max_depth);
  return c.Run(out, error);
}

}  // namespace kvidx::ingest
