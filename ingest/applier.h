// Applies decoded event batches of one publisher to the index: namespaces (model, LoRA),
// the sequence-id form's sequence table, KVBM, and exactly-once resumption within a batch.
//
// One Applier serves one ingest worker; it is not thread-safe (the worker is single-threaded
// per publisher by design). The sequence tables it keeps live in this process: a worker that
// restarts resyncs its sequence-id publishers instead of resuming them (PublisherLink::Start).
// Which adapter namespaces a publisher stored into is rebuilt on demand: a removal whose hash no
// known namespace maps is looked up in every namespace of the publisher's model.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"

#include "config/config.h"
#include "index/prefix_index.h"
#include "ingest/engine_hash.h"
#include "ingest/events.h"

namespace kvidx::ingest {

struct AppliedInfo {
  EventKind kind;
  index::PublisherId publisher;
  index::NamespaceId ns;
  uint32_t blocks;
  index::BlockKey first_key;  // 0 when unknown (removals of unknown hashes, clears)
};

struct ApplierConfig {
  // Called after each applied event (for the WatchEvents rings). May be empty.
  std::function<void(const AppliedInfo&)> on_applied;
  // Block size of namespaces the applier registers on the fly (LoRA adapters, AIBrix models)
  // when the event carries none.
  uint32_t default_block_size = 16;
  // lora_id -> LoRA name, for engines that send only numeric ids; unmapped ids become "lora-<id>".
  std::map<int64_t, std::string> lora_names;
  // A publisher may open at most this many adapter (LoRA) namespaces of its model beyond the
  // configured ones (`lora_names`); past it, events for new adapters are refused and counted.
  uint32_t max_adapters_per_model = 64;
  // The byte budget of one sequence-id publisher's sequence table (SequenceBytes below). A
  // block that would take the table past it is not recorded (nor stored in the index: it could
  // never be removed), and is counted in the publisher's budget_drops.
  size_t max_sequence_bytes = 64u << 20;
  // Models whose engines' block hashes are cross-checked (ingest/engine_hash.h), by name.
  std::map<std::string, HashCheckConfig> hash_checks;
};

// One sequence of a sequence-id publisher. A sequence is kept while it has stored blocks: one
// whose last block is removed, or that finishes holding none, is forgotten, so the table holds
// only what the engine still caches (a RequestFinished never leaks an entry).
struct SequenceState {
  std::vector<index::BlockKey> blocks;  // by block number; 0 = not stored; no trailing 0
  uint32_t stored = 0;                  // non-zero entries of `blocks`
  std::string request_id;               // at most kMaxRequestIdBytes
  bool finished = false;
  bool succeeded = false;
};
inline constexpr size_t kMaxRequestIdBytes = 232;  // what a sequence record carries
// What a sequence costs the table: its node, its block vector and its request id.
inline size_t SequenceBytes(const SequenceState& s) {
  return 96 + s.blocks.capacity() * sizeof(index::BlockKey) + s.request_id.capacity();
}
// What the table pays per distinct block key its sequences hold (the key's reference count).
inline constexpr size_t kKeyRefBytes = 48;

class Applier {
 public:
  Applier(index::PrefixIndex* index, ApplierConfig config);

  // Applies `batch` for publisher `p`, skipping its first `skip_ops` index operations (the part
  // a dead predecessor already applied). Errors from single events are counted in the
  // publisher's slot and do not stop the batch; an error returned means the index itself
  // refused (e.g. unknown publisher).
  absl::Status Apply(index::PublisherId p, const EventBatch& batch, uint64_t skip_ops = 0);

  // Forgets what this applier keeps in memory for `p` (after a clear or a resync).
  void Forget(index::PublisherId p);

  const std::map<int64_t, SequenceState>* sequences(index::PublisherId p) const;
  // Bytes of `p`'s sequence table now (the sum of SequenceBytes).
  size_t sequence_bytes(index::PublisherId p) const;

 private:
  absl::StatusOr<index::NamespaceId> NamespaceFor(index::PublisherId p, const Event& e);
  absl::Status ApplyEvent(index::PublisherId p, const Event& e, uint64_t* skip);
  absl::Status ApplySeq(index::PublisherId p, const Event& e, uint64_t* skip);
  void PublishSequenceBytes(index::PublisherId p, size_t bytes);
  void ReleaseKey(index::PublisherId p, index::NamespaceId ns, index::BlockKey key, size_t& bytes);
  void StoreSeqBlock(index::PublisherId p, index::NamespaceId ns, SequenceState& s, uint32_t n,
                     index::BlockKey key, size_t& bytes);
  // The adapter namespace of the publisher's model whose mapping knows `hash`, if any.
  std::optional<index::NamespaceId> FindAdapterNamespace(index::PublisherId p, uint64_t hash);
  // False (the event's `ops` operations refused and counted) if `block_size` is not the
  // namespace's.
  bool BlockSizeFits(index::PublisherId p, index::NamespaceId ns, uint32_t block_size,
                     uint64_t ops);

  index::PrefixIndex* index_;
  ApplierConfig config_;
  EngineHashChecker hash_checker_;
  // Namespaces each publisher has stored into (base first): removals carry no namespace.
  std::unordered_map<index::PublisherId, std::vector<index::NamespaceId>> namespaces_;
  std::unordered_map<index::PublisherId, std::map<int64_t, SequenceState>> sequences_;
  std::unordered_map<index::PublisherId, size_t> sequence_bytes_;
  // The sequence-id form: how many (sequence, block number) entries of a publisher hold each
  // block key. The index holds the block once (its reference count saturates at 255) and
  // drops it when the last entry goes. kKeyRefBytes each, within the sequence byte budget.
  std::unordered_map<index::PublisherId, std::unordered_map<index::BlockKey, uint32_t>> key_refs_;
};

}  // namespace kvidx::ingest
