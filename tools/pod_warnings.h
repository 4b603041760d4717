// kvidxctl pods: the warnings an operator must act on, one line per publisher and cause.
#pragma once

#include <cstdio>

#include "kvidx.pb.h"

namespace kvidx::ctl {

inline void PrintPodWarnings(const v1::ListPodsResponse& r) {
  for (const auto& p : r.pods()) {
    auto get = [&p](const char* k) -> unsigned long {
      return p.counters().count(k) != 0 ? p.counters().at(k) : 0;
    };
    if (get("block_size_mismatches") != 0) {
      std::printf(
          "warning: %s/%u sends %lu-token blocks for model %s; %lu blocks refused "
          "(configure the model's block_size to match)\n",
          p.pod().c_str(), p.dp_rank(), get("mismatched_block_size"), p.model().c_str(),
          get("block_size_mismatches"));
    }
    // The engine-hash cross-check (ingest/engine_hash.h): the engine hashes otherwise than
    // configured, so its block size, seed, LoRA names or salts differ from what kvidx assumes.
    if (get("hash_mismatches") != 0) {
      std::printf(
          "warning: %s/%u: %lu of %lu recomputed block hashes differ from the engine's, last "
          "%016lx (check the model's block_size, engine_hash_seed, LoRA names, cache salts)\n",
          p.pod().c_str(), p.dp_rank(), get("hash_mismatches"), get("hash_checks"),
          get("last_hash_mismatch"));
    }
  }
}

}  // namespace kvidx::ctl
