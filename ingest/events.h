// Decoded KV-cache events, the same for every engine dialect (see ../shared/spec/wire.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "index/layout.h"
#include "wire/vocabulary.h"

namespace kvidx::ingest {

using wire::Dialect;
using wire::DialectName;
using wire::ParseDialect;

enum class EventKind {
  kStored,     // blocks stored (engine hashes, optional tokens)
  kRemoved,    // blocks removed (engine hashes)
  kCleared,    // all blocks cleared (AllBlocksCleared, cache_cleared, KVBM Shutdown)
  kSeqStored,  // sequence-id form: blocks by position within a sequence
  kSeqRemoved,
  kRequestFinished,
};

struct Event {
  EventKind kind = EventKind::kStored;
  // Engine block hashes; for KVBM, wire::LineageEngineHash of each positional lineage hash.
  std::vector<uint64_t> hashes;
  std::vector<uint32_t> positions;  // KVBM: each hash's block position (0-based)
  std::optional<uint64_t> parent;   // parent engine hash
  std::vector<uint32_t> tokens;     // token ids of all blocks, block_size each
  uint32_t block_size = 0;
  std::optional<int64_t> lora_id;
  std::optional<std::string> lora_name;
  std::optional<std::string> cache_salt;  // SGLang's BlockStoredWithMetadata
  std::string model_name;                 // AIBrix; empty: the publisher's model
  index::Tier tier = index::kGpu;
  bool has_extra_keys = false;  // vLLM extra_keys present
  // Per block, the msgpack bytes of its extra_keys entry ("" for nil), keyed into its block key
  // (docs/block-keys.md); empty when the event has none or only nils.
  std::vector<std::string> extra_keys;
  std::optional<int64_t> group_idx;
  // Sequence-id form.
  int64_t sequence_id = 0;
  std::vector<uint32_t> block_numbers;
  std::string request_id;
  bool finished = false;
};

struct EventBatch {
  Dialect dialect = Dialect::kAuto;  // what was decoded
  double ts = 0;
  std::optional<int64_t> dp_rank;
  std::vector<Event> events;
  uint32_t unknown_events = 0;  // skipped: unknown tag (counted, not applied)
  std::optional<std::pair<uint64_t, uint64_t>> instance_id;  // KVBM (high, low)
};

// Number of index operations a batch's events expand to, in order (see Applier).
uint64_t OpCount(const Event& e);

}  // namespace kvidx::ingest
