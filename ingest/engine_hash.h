// Online cross-check of engines' block hashes (issue: the operator's early warning for a wrong
// block size, seed, LoRA name or salt).
//
// For a model configured with the engine's hash algorithm (vLLM `sha256_cbor`) and seed
// (PYTHONHASHSEED, or vLLM's fixed default "vllm-none-hash"), the owning worker recomputes the
// hash of the blocks of a sample of stored events from their token ids and compares it with
// the hash the engine published (../shared/spec/wire.md §3):
//   NONE_HASH = SHA-256(CBOR(seed as a text string))
//   digest_i  = SHA-256(CBOR([digest_{i-1} as 32 bytes, [tokens of block i], null]))
//   event int = the digest's last 8 bytes, big-endian
// Only blocks without extra keys are checkable (no LoRA name, cache salt or multimodal hash:
// those change the preimage); a continuation event is checkable when its parent's digest is
// still remembered from a checked event. Counts go to the publisher's slot: hash_checks
// (blocks compared), hash_mismatches (blocks whose hash differs), last_hash_mismatch.
//
// Not thread-safe: one checker per worker, called from its apply thread.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "index/layout.h"
#include "index/types.h"
#include "ingest/events.h"

namespace kvidx::ingest {

using Sha256Digest = std::array<uint8_t, 32>;

// vLLM's sha256_cbor block hashing (pure functions).
Sha256Digest VllmNoneHash(std::string_view seed);
Sha256Digest VllmBlockDigest(const Sha256Digest& parent, std::span<const uint32_t> tokens);
uint64_t VllmEventInt(const Sha256Digest& d);  // last 8 bytes, big-endian

struct HashCheckConfig {
  std::string seed = "vllm-none-hash";
  uint32_t every = 8;  // check one prompt-starting event in this many (continuations always)
};

class EngineHashChecker {
 public:
  // `models`: model name -> its check (models absent are not checked).
  explicit EngineHashChecker(const std::map<std::string, HashCheckConfig>& models);

  bool enabled() const { return !models_.empty(); }
  // Checks `e` (a stored event of publisher `p` of `model`) if it is sampled and checkable, and
  // counts the outcome in `slot`.
  void Observe(index::PublisherId p, const std::string& model, const Event& e,
               index::PublisherIngestState* slot);
  // Forgets a publisher's remembered digests (its engine restarted or was cleared).
  void Forget(index::PublisherId p);

 private:
  struct Model {
    HashCheckConfig config;
    Sha256Digest none_hash;
  };
  struct PerPublisher {
    uint64_t starts = 0;  // prompt-starting events seen (the sampling counter)
    std::unordered_map<uint64_t, Sha256Digest> digests;  // engine hash -> digest, checked
    std::deque<uint64_t> order;                          // insertion order, for the bound
  };
  static constexpr size_t kRemembered = 1024;  // digests per publisher

  std::map<std::string, Model> models_;
  std::unordered_map<index::PublisherId, PerPublisher> publishers_;
};

}  // namespace kvidx::ingest
