// The one msgpack encoder of engine batches for the simulator, the benches and the tests: every
// encoding kvidx-sim speaks and the sequence-id form, written from wire.md (the Python peers in
// tests/integration keep their own, independent encoders on purpose).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "wire/lineage_hash.h"

namespace kvidx::sim {

enum class Encoding {
  kVllmArray,  // vLLM <= 0.23: array events, int hashes
  kVllmMap,    // vLLM >= 0.24: map events, int hashes
  kVllmBytes,  // map events, 32-byte digests as bin (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0)
  kVllmV090,   // the first release: 2-element batch, 6-element BlockStored
  kSglang,     // SGLang: 7-element arrays, digests as bin folded to the first 8 bytes
  kAibrix,     // {"events": [{"type": "BLOCK_STORED", ...}]}
  kSeqId,      // the sequence-id form: {"events": [{"sequence_id", "block_numbers", ...}]}
  kKvbm,       // NVIDIA KVBM: KvbmCacheEvents, lineage hashes at positions 16, 32, ... 65536
};
bool ParseEncoding(const std::string& s, Encoding* out);
const char* EncodingName(Encoding e);
// The dialect name kvidx should be configured with for an encoding.
const char* DialectFor(Encoding e);

// Consecutive stored blocks whose parent is the previous one: one BlockStored event.
struct StoredRun {
  std::vector<uint64_t> hashes;  // engine hashes, one per block
  uint64_t parent = 0;           // the first block's parent; 0: none
  std::vector<uint32_t> tokens;  // block_size per block
};

struct BatchContent {
  std::vector<StoredRun> runs;
  std::vector<uint64_t> removed;  // one BlockRemoved each
  bool cleared = false;           // a final AllBlocksCleared
  uint32_t dp_rank = 0;           // the batch's data-parallel rank (not in v0.9.0 batches)
};

// The batch payload in encoding `e`, stamped `ts` (seconds), for blocks of `block_size` tokens.
std::vector<uint8_t> EncodeBatch(Encoding e, double ts, uint32_t block_size, const BatchContent& c);

// One event of the sequence-id form: blocks of a request's sequence stored (with their tokens)
// or removed (without).
struct SeqIdEvent {
  int64_t sequence_id = 0;
  std::vector<uint32_t> block_numbers;
  std::vector<std::vector<uint32_t>> block_tokens;  // empty: a removal
};
// {"events": [{"sequence_id", "block_numbers", "block_token_ids"?}, ...]}, then a
// {"type": "cache_cleared"} when `cleared`.
std::vector<uint8_t> EncodeSeqIdBatch(const std::vector<SeqIdEvent>& events, bool cleared = false);

// KVBM publishes blocks at power-of-two positions from 2^4 to 2^16 only (wire.md §10).
inline bool KvbmPublishes(uint32_t position) {
  return position >= 16 && position <= 65536 && (position & (position - 1)) == 0;
}
// One KvbmCacheEvents in rmp-serde's named form: {"events": {"Create"|"Remove": [u128 ...]},
// "instance_id": u128} (hashes and instance as bin 16, big-endian), or {"events": "Shutdown"}
// when `hashes` is empty and `shutdown`.
std::vector<uint8_t> EncodeKvbm(bool create, bool shutdown,
                                const std::vector<wire::LineageHash>& hashes, uint64_t instance_hi,
                                uint64_t instance_lo);

}  // namespace kvidx::sim
