// libFuzzer harness for the batch decoders: the first byte picks the dialect, the rest is the
// payload. Every input must decode or be refused without a crash, an out-of-bounds read or
// undefined behaviour (built with ASan + UBSan), and whenever the zero-allocation path accepts a
// payload the general decoder must accept it too and produce the same events.
#include <cstdint>
#include <cstdio>
#include <span>

#include "ingest/decoder.h"
#include "ingest/fast_decoder.h"
#include "tests/ingest/same_events.h"

using namespace kvidx::ingest;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Dialect dialect = static_cast<Dialect>(data[0] % 6);
  std::span<const uint8_t> payload(data + 1, size - 1);
  EventBatch batch;
  DecodeReason reason;
  (void)DecodeBatch(payload, dialect, &batch, &reason);
  EventBatch fast;
  if (!payload.empty() && FastDecodeBatch(payload, dialect, &fast, {}) == FastResult::kOk) {
    EventBatch general;
    DecodeLimits only;
    only.general_only = true;
    absl::Status st = DecodeBatch(payload, dialect, &general, &reason, only);
    std::string why;
    if (!st.ok()) {
      std::fprintf(stderr, "fast path accepted, general decoder refused: %s\n",
                   std::string(st.message()).c_str());
      __builtin_trap();
    }
    if (!SameEvents(fast, general, &why)) {
      std::fprintf(stderr, "fast and general decoders disagree: %s\n", why.c_str());
      __builtin_trap();
    }
  }
  return 0;
}
