#include "ingest/decoder.h"

#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

#include <msgpack.hpp>

#include "ingest/fast_decoder.h"
#include "ingest/internal/object_parser.h"
#include "ingest/json_to_msgpack.h"

namespace kvidx::ingest {
namespace {

// A msgpack visitor that builds nothing and refuses containers past the limits (size, depth),
// saying which in `why`.
class ShapeCheck : public msgpack::null_visitor {
 public:
  explicit ShapeCheck(const DecodeLimits& limits) : limits_(limits) {}
  bool start_array(uint32_t n) { return Open(n, limits_.max_array, "an array"); }
  bool end_array() { return --depth_, true; }
  bool start_map(uint32_t n) { return Open(n, limits_.max_map, "a map"); }
  bool end_map() { return --depth_, true; }
  const std::string& why() const { return why_; }

 private:
  bool Open(uint32_t n, uint32_t max, const char* what) {
    if (n > max) {
      why_ = absl::StrCat(what, " of ", n, " elements (at most ", max, ")");
      return false;
    }
    if (++depth_ > limits_.max_depth) {
      why_ = absl::StrCat("nested deeper than ", limits_.max_depth, " levels");
      return false;
    }
    return true;
  }
  const DecodeLimits& limits_;
  uint32_t depth_ = 0;
  std::string why_;
};

}  // namespace

uint64_t OpCount(const Event& e) {
  switch (e.kind) {
    case EventKind::kStored:
    case EventKind::kRemoved:
      return e.hashes.size();
    case EventKind::kSeqStored:
    case EventKind::kSeqRemoved:
      return e.block_numbers.size();
    case EventKind::kCleared:
      return 1;
    case EventKind::kRequestFinished:
      return 0;
  }
  return 0;
}

namespace {

using internal::Parser;

}  // namespace

absl::Status DecodeBatch(std::span<const uint8_t> payload, Dialect dialect, EventBatch* out,
                         DecodeReason* reason, const DecodeLimits& limits) {
  *out = EventBatch{};
  auto fail = [&](DecodeReason r, std::string_view why) {
    *reason = r;
    *out = EventBatch{};
    return absl::InvalidArgumentError(absl::StrCat(DecodeReasonName(r), ": ", std::string(why)));
  };
  if (payload.size() > limits.max_payload_bytes) {
    return fail(DecodeReason::kTooLarge, absl::StrCat("payload of ", payload.size(), " bytes"));
  }
  if (payload.empty()) return fail(DecodeReason::kTruncated, "empty payload");
  // The common case (vLLM / SGLang arrays and maps) without building an object tree.
  if (!limits.general_only && FastDecodeBatch(payload, dialect, out, limits) == FastResult::kOk) {
    *reason = DecodeReason::kOk;
    return absl::OkStatus();
  }
  *out = EventBatch{};
  // serde_json payloads (KVBM): an object. 0x7b ('{') is never a valid msgpack batch (it is
  // the positive fixint 123), so the first byte tells the encodings apart.
  std::vector<uint8_t> converted;
  if (payload[0] == '{' && (dialect == Dialect::kKvbm || dialect == Dialect::kAuto)) {
    std::string why;
    if (!JsonToMsgpack(payload, &converted, &why, static_cast<int>(limits.max_depth))) {
      return fail(DecodeReason::kMalformed, "JSON: " + why);
    }
    payload = converted;
  }
  // One zone per thread, cleared after each batch: its first chunk is reused, so a typical
  // batch decodes without touching malloc. Strings and binaries point into `payload` instead
  // of being copied (the events copy what they keep).
  // First the payload's shape, without allocating: every array and map it claims must be there
  // in full, and no deeper than max_depth. msgpack-c allocates an array's elements when it
  // reads the header, so without this a few bytes claiming a million elements at each of 16
  // levels would cost 16 x 16 MiB before failing; after it, the tree costs at most 16 bytes per
  // payload byte.
  {
    ShapeCheck shape(limits);
    size_t off = 0;
    switch (msgpack::detail::parse_imp(reinterpret_cast<const char*>(payload.data()),
                                       payload.size(), off, shape)) {
      case msgpack::PARSE_SUCCESS:
      case msgpack::PARSE_EXTRA_BYTES:
        break;
      case msgpack::PARSE_CONTINUE:
        return fail(DecodeReason::kTruncated, "fewer bytes than the msgpack claims");
      case msgpack::PARSE_STOP_VISITOR:
        return fail(DecodeReason::kTooLarge, shape.why());
      default:
        return fail(DecodeReason::kMalformed, "not msgpack");
    }
  }
  thread_local msgpack::zone zone(size_t{64} * 1024);
  struct ZoneReset {
    ~ZoneReset() { zone.clear(); }
  } reset;
  msgpack::object root;
  size_t offset = 0;
  try {
    msgpack::unpack_limit lim(limits.max_array, limits.max_map, limits.max_str, limits.max_bin,
                              /*ext=*/64, limits.max_depth);
    auto reference_all = [](msgpack::type::object_type, std::size_t, void*) { return true; };
    root = msgpack::unpack(zone, reinterpret_cast<const char*>(payload.data()), payload.size(),
                           offset, reference_all, nullptr, lim);
  } catch (const msgpack::insufficient_bytes& e) {
    return fail(DecodeReason::kTruncated, e.what());
  } catch (const msgpack::size_overflow& e) {
    return fail(DecodeReason::kTooLarge, e.what());
  } catch (const std::bad_alloc&) {
    return fail(DecodeReason::kTooLarge, "allocation failed");
  } catch (const std::exception& e) {
    return fail(DecodeReason::kMalformed, e.what());
  }
  if (offset != payload.size()) {
    return fail(DecodeReason::kTrailingBytes,
                absl::StrCat(payload.size() - offset, " bytes after the batch"));
  }
  Parser parser(dialect, limits);
  if (!parser.Root(root, out)) return fail(parser.reason(), parser.detail());
  *reason = DecodeReason::kOk;
  return absl::OkStatus();
}

}  // namespace kvidx::ingest
