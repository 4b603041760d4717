// The namespace and publisher tables of the segment: registration under the admin lock, and
// access to slots by id.
//
// Contract
// - Register*/Free write under the segment's admin lock (never held with a stripe lock). A slot
//   is published by one release store of its `in_use` / `state` word, so readers in any process
//   see either no slot or a complete one.
// - active_*() return nullptr for an id out of range or a slot not in use. The raw *_slot()
//   accessors return any slot in range (writers use them for slots they own).
// - Errors: INVALID_ARGUMENT for names that do not fit, NOT_FOUND for an unknown namespace,
//   RESOURCE_EXHAUSTED for a full table, INTERNAL when the admin lock is unrecoverable.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "index/layout.h"
#include "index/types.h"

namespace kvidx::index::internal {

class Registry {
 public:
  Registry(char* base, SegmentHeader* header) : base_(base), header_(header) {}

  NamespaceSlot* ns_slot(NamespaceId ns) const {
    if (ns >= header_->geometry.namespaces) return nullptr;
    return reinterpret_cast<NamespaceSlot*>(base_ + header_->namespaces_offset) + ns;
  }
  PublisherSlot* pub_slot(PublisherId p) const {
    if (p >= header_->geometry.publishers) return nullptr;
    return reinterpret_cast<PublisherSlot*>(base_ + header_->publishers_offset) + p;
  }
  const NamespaceSlot* active_namespace(NamespaceId ns) const {
    NamespaceSlot* s = ns_slot(ns);
    return s != nullptr && __atomic_load_n(&s->in_use, __ATOMIC_ACQUIRE) ? s : nullptr;
  }
  const PublisherSlot* active_publisher(PublisherId p) const {
    PublisherSlot* s = pub_slot(p);
    return s != nullptr && __atomic_load_n(&s->id.state, __ATOMIC_ACQUIRE) ==
                               static_cast<uint32_t>(PublisherState::kActive)
               ? s
               : nullptr;
  }

  // Idempotent: the same model + LoRA name yields the same id (block size and flags updated).
  absl::StatusOr<NamespaceId> RegisterNamespace(const NamespaceSpec& spec);
  std::optional<NamespaceId> FindNamespace(std::string_view model,
                                           std::string_view lora_name) const;
  // Idempotent by (pod, dp_rank): re-registering updates the configuration, keeps state.
  absl::StatusOr<PublisherId> RegisterPublisher(const PublisherSpec& spec);
  std::optional<PublisherId> FindPublisher(std::string_view pod, uint32_t dp_rank) const;
  // Frees the slot (its residencies must be gone already).
  void FreePublisher(PublisherId p);

  std::vector<PublisherId> ActivePublishers() const;
  std::vector<NamespaceId> ActiveNamespaces() const;

  // The engine-hash scope of `p`'s stores: 0 (shared content hashes) or p + 1 (private).
  uint16_t ScopeFor(PublisherId p) const {
    if (p == kAnyPublisher) return 0;
    const PublisherSlot* s = pub_slot(p);
    return s != nullptr && (Ld(s->id.flags) & kPrivateEngineHashes) ? static_cast<uint16_t>(p + 1)
                                                                    : 0;
  }
  // One of `p`'s residencies was dropped by someone else's eviction (or a namespace clear).
  void NotePairDropped(PublisherId p, bool evicted) const;

 private:
  // Fills a slot found free or re-registered with the spec's configuration.
  void WritePublisherConfig(PublisherSlot* s, const PublisherSpec& spec, bool fresh);

  char* base_;
  SegmentHeader* header_;
};

}  // namespace kvidx::index::internal
