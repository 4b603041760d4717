// The index's vocabulary: ids, what registration and writes take, what reads return.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "index/block_key.h"
#include "index/layout.h"

namespace kvidx::index {

using PublisherId = uint16_t;
using NamespaceId = uint16_t;

// Any publisher sharing content hashes (for engine-hash resolution).
inline constexpr PublisherId kAnyPublisher = 0xFFFF;

struct NamespaceSpec {
  std::string model;
  std::string lora_name;  // "" for the base model
  int32_t lora_id = -1;   // numeric id some engines send instead of a name
  uint32_t block_size = 16;
  bool key_by_engine_hash = false;  // for token-less dialects (KVBM)
};

struct PublisherSpec {
  std::string pod;
  uint32_t dp_rank = 0;
  NamespaceId ns = 0;
  uint32_t worker = 0;
  uint64_t quota_pairs = 0;  // 0: none
  bool private_engine_hashes = false;
  // kvidx binds the SUB socket and the engine connects (instead of kvidx connecting).
  bool bind_subscriber = false;
  std::string endpoint;
  std::string replay_endpoint;
  std::string topic;
  std::string dialect;
};

// One BlockStored event's worth of blocks for one publisher.
struct StoreRequest {
  Tier tier = kGpu;
  std::optional<uint64_t> parent_engine_hash;  // nullopt: the first block starts the sequence
  std::span<const uint64_t> engine_hashes;     // one per block
  std::span<const uint32_t> tokens;            // block_size per block; empty: token-less
  uint32_t block_size = 0;                     // 0: the namespace's block size
  // Optional per-block extra-key bytes (see docs/block-keys.md); empty or one entry per block.
  std::span<const std::span<const uint8_t>> extra;
  // The namespace to store in (a LoRA adapter's); default: the publisher's.
  std::optional<NamespaceId> ns;
};

struct StoreResult {
  uint32_t stored = 0;      // residencies added or re-referenced
  uint32_t duplicates = 0;  // of which the publisher already held the block in that tier
  uint32_t rejected = 0;    // capacity or quota: could not be stored
  uint32_t unresolved = 0;  // token-less and the engine hash is unknown
  bool orphan = false;      // parent unknown: nothing of the event could be keyed
};

struct Holder {
  PublisherId publisher;
  Tier tier;
  uint8_t refs;
};

struct LookupOptions {
  std::span<const PublisherId> candidates;  // empty: every publisher
  uint32_t max_blocks = 0;                  // 0: all of `keys`
};

struct PublisherMatch {
  PublisherId publisher;
  uint32_t blocks;                  // leading blocks held, any tier
  uint32_t tier_blocks[kNumTiers];  // leading blocks held in each tier
};

struct LookupResult {
  std::vector<PublisherMatch> matches;  // most blocks first
  uint32_t blocks_walked = 0;
  bool degraded = false;  // some stripe could only be read best-effort (dead writer)
};

struct IndexStats {
  uint64_t segment_bytes = 0;
  uint64_t blocks = 0;
  uint64_t block_capacity = 0;
  uint64_t pairs = 0;
  uint64_t pair_capacity = 0;
  uint64_t engine_entries = 0;
  uint64_t engine_capacity = 0;
  uint64_t evicted_blocks = 0;
  uint64_t stripe_repairs = 0;
  uint64_t engine_swept = 0;
  uint64_t engine_full = 0;
  uint32_t publishers = 0;
  uint32_t namespaces = 0;
  // Segment bytes divided by live pairs (what the memory goal measures) and by capacity.
  double bytes_per_live_pair = 0;
  double bytes_per_pair_capacity = 0;
};

// One (key, holder) of the index, as Dump() lists them.
struct IndexEntry {
  BlockKey key;
  NamespaceId ns;
  Holder holder;
};

}  // namespace kvidx::index
