#include "index/internal/registry.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvidx::index::internal {
namespace {

void CopyString(char* dst, size_t cap, std::string_view src) {
  size_t n = std::min(cap - 1, src.size());
  std::memcpy(dst, src.data(), n);
  std::memset(dst + n, 0, cap - n);
}

std::string_view SlotString(const char* s, size_t cap) { return {s, strnlen(s, cap)}; }

uint32_t PublisherFlagsOf(const PublisherSpec& spec) {
  return (spec.private_engine_hashes ? uint32_t{kPrivateEngineHashes} : 0u) |
         (spec.bind_subscriber ? uint32_t{kBindSubscriber} : 0u);
}

}  // namespace

absl::StatusOr<NamespaceId> Registry::RegisterNamespace(const NamespaceSpec& spec) {
  if (spec.model.empty() || spec.model.size() >= sizeof(NamespaceSlot::model) ||
      spec.lora_name.size() >= sizeof(NamespaceSlot::lora_name)) {
    return absl::InvalidArgumentError("namespace: model must be 1..119 bytes, LoRA name < 64");
  }
  if (spec.block_size == 0 || spec.block_size > 65536) {
    return absl::InvalidArgumentError("namespace: block size must be 1..65536 tokens");
  }
  RobustLockGuard guard(header_->admin_mu);
  if (guard.unrecoverable()) return absl::InternalError("admin lock unrecoverable");
  if (guard.owner_died()) guard.Repaired();  // slots are published by one store: nothing to fix
  const uint32_t flags = spec.key_by_engine_hash ? uint32_t{kKeyByEngineHash} : 0u;
  std::optional<NamespaceId> free_slot;
  for (uint32_t i = 0; i < header_->geometry.namespaces; ++i) {
    NamespaceSlot* s = ns_slot(static_cast<NamespaceId>(i));
    if (!Ld(s->in_use)) {
      if (!free_slot) free_slot = static_cast<NamespaceId>(i);
      continue;
    }
    if (SlotString(s->model, sizeof(s->model)) == spec.model &&
        SlotString(s->lora_name, sizeof(s->lora_name)) == spec.lora_name) {
      St(s->block_size, spec.block_size);
      St(s->flags, flags);
      St(s->lora_id, spec.lora_id);
      return static_cast<NamespaceId>(i);
    }
  }
  if (!free_slot) return absl::ResourceExhaustedError("namespace table is full");
  NamespaceSlot* s = ns_slot(*free_slot);
  CopyString(s->model, sizeof(s->model), spec.model);
  CopyString(s->lora_name, sizeof(s->lora_name), spec.lora_name);
  St(s->block_size, spec.block_size);
  St(s->flags, flags);
  St(s->lora_id, spec.lora_id);
  St(s->root, NamespaceRoot(spec.model, spec.lora_name));
  __atomic_store_n(&s->in_use, 1u, __ATOMIC_RELEASE);
  AddRelaxed(header_->registry_version, uint64_t{1});
  return *free_slot;
}

std::optional<NamespaceId> Registry::FindNamespace(std::string_view model,
                                                   std::string_view lora_name) const {
  for (uint32_t i = 0; i < header_->geometry.namespaces; ++i) {
    const NamespaceSlot* s = active_namespace(static_cast<NamespaceId>(i));
    if (s != nullptr && SlotString(s->model, sizeof(s->model)) == model &&
        SlotString(s->lora_name, sizeof(s->lora_name)) == lora_name) {
      return static_cast<NamespaceId>(i);
    }
  }
  return std::nullopt;
}

void Registry::WritePublisherConfig(PublisherSlot* s, const PublisherSpec& spec, bool fresh) {
  if (fresh) {
    // Counters and stream state start from zero; the epoch continues across reuse of the slot
    // so that a reader never sees an old epoch for a new publisher.
    uint64_t epoch = Ld(s->ingest.epoch);
    std::memset(static_cast<void*>(s), 0, sizeof(PublisherSlot));
    St(s->ingest.epoch, epoch + 1);
    CopyString(s->id.pod, sizeof(s->id.pod), spec.pod);
    St(s->id.dp_rank, spec.dp_rank);
  }
  St(s->id.ns, uint32_t{spec.ns});
  St(s->id.worker, spec.worker);
  St(s->id.quota_pairs, spec.quota_pairs);
  St(s->id.flags, PublisherFlagsOf(spec));
  CopyString(s->id.endpoint, sizeof(s->id.endpoint), spec.endpoint);
  CopyString(s->id.replay_endpoint, sizeof(s->id.replay_endpoint), spec.replay_endpoint);
  CopyString(s->id.topic, sizeof(s->id.topic), spec.topic);
  CopyString(s->id.dialect, sizeof(s->id.dialect), spec.dialect);
}

absl::StatusOr<PublisherId> Registry::RegisterPublisher(const PublisherSpec& spec) {
  if (spec.pod.empty() || spec.pod.size() >= sizeof(PublisherIdentity::pod)) {
    return absl::InvalidArgumentError("publisher: pod name must be 1..63 bytes");
  }
  if (spec.endpoint.size() >= sizeof(PublisherIdentity::endpoint) ||
      spec.replay_endpoint.size() >= sizeof(PublisherIdentity::replay_endpoint) ||
      spec.topic.size() >= sizeof(PublisherIdentity::topic) ||
      spec.dialect.size() >= sizeof(PublisherIdentity::dialect)) {
    return absl::InvalidArgumentError("publisher: endpoint, topic or dialect too long");
  }
  if (active_namespace(spec.ns) == nullptr) {
    return absl::NotFoundError(absl::StrCat("publisher: no namespace with id ", spec.ns));
  }
  RobustLockGuard guard(header_->admin_mu);
  if (guard.unrecoverable()) return absl::InternalError("admin lock unrecoverable");
  if (guard.owner_died()) guard.Repaired();
  std::optional<PublisherId> slot;
  bool existing = false;
  for (uint32_t i = 0; i < header_->geometry.publishers && !existing; ++i) {
    PublisherSlot* s = pub_slot(static_cast<PublisherId>(i));
    if (Ld(s->id.state) != static_cast<uint32_t>(PublisherState::kActive)) {
      if (!slot) slot = static_cast<PublisherId>(i);
    } else if (SlotString(s->id.pod, sizeof(s->id.pod)) == spec.pod &&
               Ld(s->id.dp_rank) == spec.dp_rank) {
      slot = static_cast<PublisherId>(i);
      existing = true;
    }
  }
  if (!slot) return absl::ResourceExhaustedError("publisher table is full");
  PublisherSlot* s = pub_slot(*slot);
  WritePublisherConfig(s, spec, !existing);
  __atomic_store_n(&s->id.state, static_cast<uint32_t>(PublisherState::kActive), __ATOMIC_RELEASE);
  AddRelaxed(header_->registry_version, uint64_t{1});
  return *slot;
}

std::optional<PublisherId> Registry::FindPublisher(std::string_view pod, uint32_t dp_rank) const {
  for (uint32_t i = 0; i < header_->geometry.publishers; ++i) {
    const PublisherSlot* s = active_publisher(static_cast<PublisherId>(i));
    if (s != nullptr && SlotString(s->id.pod, sizeof(s->id.pod)) == pod &&
        Ld(s->id.dp_rank) == dp_rank) {
      return static_cast<PublisherId>(i);
    }
  }
  return std::nullopt;
}

void Registry::FreePublisher(PublisherId p) {
  PublisherSlot* s = pub_slot(p);
  if (s == nullptr) return;
  RobustLockGuard guard(header_->admin_mu);
  if (guard.owner_died()) guard.Repaired();
  __atomic_store_n(&s->id.state, static_cast<uint32_t>(PublisherState::kFree), __ATOMIC_RELEASE);
  AddRelaxed(header_->registry_version, uint64_t{1});
}

std::vector<PublisherId> Registry::ActivePublishers() const {
  std::vector<PublisherId> out;
  for (uint32_t i = 0; i < header_->geometry.publishers; ++i) {
    if (active_publisher(static_cast<PublisherId>(i)) != nullptr) {
      out.push_back(static_cast<PublisherId>(i));
    }
  }
  return out;
}

std::vector<NamespaceId> Registry::ActiveNamespaces() const {
  std::vector<NamespaceId> out;
  for (uint32_t i = 0; i < header_->geometry.namespaces; ++i) {
    if (active_namespace(static_cast<NamespaceId>(i)) != nullptr) {
      out.push_back(static_cast<NamespaceId>(i));
    }
  }
  return out;
}

void Registry::NotePairDropped(PublisherId p, bool evicted) const {
  PublisherSlot* s = pub_slot(p);
  if (s == nullptr) return;
  AddRelaxed(s->index.pairs, uint64_t(-1));
  if (evicted) AddRelaxed(s->index.evicted_pairs, uint64_t{1});
}

}  // namespace kvidx::index::internal
