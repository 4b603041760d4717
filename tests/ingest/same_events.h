// Whether two decoded batches carry the same events (the fast and the general decoder must
// agree). Shared by the decoder tests and the fuzz harness.
#pragma once

#include <cstring>
#include <string>

#include "ingest/events.h"

namespace kvidx::ingest {

inline bool SameEvents(const EventBatch& a, const EventBatch& b, std::string* why) {
  if (a.events.size() != b.events.size()) return *why = "event count", false;
  // ts compared bit for bit: a mutated payload may hold a NaN.
  if (a.dp_rank != b.dp_rank || std::memcmp(&a.ts, &b.ts, sizeof(double)) != 0 ||
      a.dialect != b.dialect) {
    return *why = "batch", false;
  }
  for (size_t i = 0; i < a.events.size(); ++i) {
    const Event& x = a.events[i];
    const Event& y = b.events[i];
    if (x.kind != y.kind || x.hashes != y.hashes || x.parent != y.parent || x.tokens != y.tokens ||
        x.block_size != y.block_size || x.lora_id != y.lora_id || x.lora_name != y.lora_name ||
        x.tier != y.tier || x.has_extra_keys != y.has_extra_keys || x.extra_keys != y.extra_keys ||
        x.group_idx != y.group_idx || x.cache_salt != y.cache_salt) {
      return *why = "event " + std::to_string(i), false;
    }
  }
  return true;
}

}  // namespace kvidx::ingest
