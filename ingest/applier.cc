#include "ingest/applier.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

#include "index/block_key.h"
#include "shared/log.h"
#include "shared/status.h"

namespace kvidx::ingest {

using index::NamespaceId;
using index::PublisherId;
using index::PublisherSlot;

Applier::Applier(index::PrefixIndex* index, ApplierConfig config)
    : index_(index), config_(std::move(config)), hash_checker_(config_.hash_checks) {}

void Applier::Forget(PublisherId p) {
  hash_checker_.Forget(p);
  namespaces_.erase(p);
  sequences_.erase(p);
  sequence_bytes_.erase(p);
  key_refs_.erase(p);
  if (index::PublisherIngestState* s = index_->ingest_state(p))
    index::St(s->sequence_bytes, uint64_t{0});
}

size_t Applier::sequence_bytes(PublisherId p) const {
  auto it = sequence_bytes_.find(p);
  return it == sequence_bytes_.end() ? 0 : it->second;
}

const std::map<int64_t, SequenceState>* Applier::sequences(PublisherId p) const {
  auto it = sequences_.find(p);
  return it == sequences_.end() ? nullptr : &it->second;
}

absl::StatusOr<NamespaceId> Applier::NamespaceFor(PublisherId p, const Event& e) {
  const PublisherSlot* ps = index_->publisher_slot(p);
  if (ps == nullptr) return absl::NotFoundError(absl::StrCat("no publisher ", p));
  NamespaceId base = static_cast<NamespaceId>(ps->id.ns);
  auto& used = namespaces_[p];
  if (used.empty()) used.push_back(base);
  // The common case: the publisher's own model, no adapter.
  bool no_lora = (!e.lora_name || e.lora_name->empty()) && (!e.lora_id || *e.lora_id <= 0);
  if (no_lora && e.model_name.empty()) return base;
  std::string lora;
  if (e.lora_name && !e.lora_name->empty()) {
    lora = *e.lora_name;
  } else if (e.lora_id && *e.lora_id > 0) {
    lora = config::AdapterName(config_.lora_names, *e.lora_id);
  }
  const index::NamespaceSlot* base_slot = index_->namespace_slot(base);
  if (base_slot == nullptr) return absl::FailedPreconditionError("publisher's namespace is gone");
  // A publisher stays in its lane: its own model (AIBrix events may name it, not another).
  if (!e.model_name.empty() && e.model_name != std::string_view(base_slot->model)) {
    if (index::PublisherIngestState* w = index_->ingest_state(p))
      index::AddRelaxed(w->foreign_model_events, uint64_t{1});
    return absl::PermissionDeniedError(
        absl::StrCat("event names model '", e.model_name, "', not the publisher's"));
  }
  const std::string model(base_slot->model);
  if (lora.empty()) return base;
  auto found = index_->FindNamespace(model, lora);
  NamespaceId ns;
  if (found) {
    ns = *found;
  } else {
    // A new adapter namespace: configured adapters always, others up to the limit (a
    // publisher must not exhaust the namespace table with made-up adapter names).
    bool configured = false;
    for (const auto& [id, name] : config_.lora_names) configured |= name == lora;
    uint32_t adapters = 0;
    for (index::NamespaceId cand : index_->ActiveNamespaces()) {
      const index::NamespaceSlot* s = index_->namespace_slot(cand);
      adapters += s != nullptr && s->lora_name[0] != '\0' && model == s->model;
    }
    if (!configured && adapters >= config_.max_adapters_per_model) {
      if (index::PublisherIngestState* w = index_->ingest_state(p))
        index::AddRelaxed(w->adapter_limit_events, uint64_t{1});
      return absl::ResourceExhaustedError(
          absl::StrCat("adapter '", lora, "': model ", model, " has ", adapters,
                       " adapter namespaces already (max_adapters_per_model)"));
    }
    index::NamespaceSpec spec;
    spec.model = model;
    spec.lora_name = lora;
    spec.lora_id = static_cast<int32_t>(e.lora_id.value_or(-1));
    spec.block_size = e.block_size != 0 ? e.block_size : base_slot->block_size;
    spec.key_by_engine_hash = (base_slot->flags & index::kKeyByEngineHash) != 0;
    KVIDX_ASSIGN_OR_RETURN(ns, index_->RegisterNamespace(spec));
  }
  if (std::find(used.begin(), used.end(), ns) == used.end()) used.push_back(ns);
  return ns;
}

std::optional<NamespaceId> Applier::FindAdapterNamespace(PublisherId p, uint64_t hash) {
  // After a worker restart the list of adapter namespaces this publisher stored into is gone;
  // the segment still knows every namespace of its model.
  const PublisherSlot* ps = index_->publisher_slot(p);
  if (ps == nullptr) return std::nullopt;
  const index::NamespaceSlot* base = index_->namespace_slot(static_cast<NamespaceId>(ps->id.ns));
  if (base == nullptr) return std::nullopt;
  auto& used = namespaces_[p];
  if (used.empty()) used.push_back(static_cast<NamespaceId>(ps->id.ns));
  for (NamespaceId cand : index_->ActiveNamespaces()) {
    if (std::find(used.begin(), used.end(), cand) != used.end()) continue;
    const index::NamespaceSlot* nss = index_->namespace_slot(cand);
    if (nss == nullptr || std::string_view(nss->model) != std::string_view(base->model)) continue;
    if (index_->ResolveEngineHash(cand, p, hash)) {
      used.push_back(cand);
      return cand;
    }
  }
  return std::nullopt;
}

bool Applier::BlockSizeFits(PublisherId p, NamespaceId ns, uint32_t block_size, uint64_t ops) {
  const index::NamespaceSlot* nss = index_->namespace_slot(ns);
  if (nss == nullptr || block_size == 0 || block_size == nss->block_size) return true;
  // Keys chained over blocks of another size never equal a router's: storing them would only
  // fill the index with blocks no lookup can reach (a silent 0 % hit rate). Refuse, count, and
  // say so once per publisher.
  const PublisherSlot* ps = index_->publisher_slot(p);
  index::PublisherIngestState* w = index_->ingest_state(p);
  if (ps != nullptr && w != nullptr) {
    if (index::Ld(w->block_size_mismatches) == 0) {
      KVIDX_LOG_WARN(
          "publisher %s/%u: events of %u-token blocks for model %s, configured with "
          "%u-token blocks: refused (fix the model's block_size)",
          ps->id.pod, ps->id.dp_rank, block_size, nss->model, nss->block_size);
    }
    index::AddRelaxed(w->block_size_mismatches, ops);
    index::St(w->mismatched_block_size, block_size);
  }
  (void)index_->SkipOps(p, index::SkipReason::kRejected, ops);
  return false;
}

absl::Status Applier::Apply(PublisherId p, const EventBatch& batch, uint64_t skip_ops) {
  if (index_->publisher_slot(p) == nullptr) {
    return absl::NotFoundError(absl::StrCat("no publisher ", p));
  }
  uint64_t skip = skip_ops;
  for (const Event& e : batch.events) {
    absl::Status st = ApplyEvent(p, e, &skip);
    if (absl::IsNotFound(st) && index_->publisher_slot(p) == nullptr) return st;
  }
  return absl::OkStatus();
}

absl::Status Applier::ApplyEvent(PublisherId p, const Event& e, uint64_t* skip) {
  const uint64_t ops = OpCount(e);
  if (ops == 0) {
    // An empty store or remove changes nothing and takes no part in the resume count: the
    // skip left by a dead predecessor belongs to the events after it.
    if (e.kind == EventKind::kRequestFinished) return ApplySeq(p, e, skip);
    return absl::OkStatus();
  }
  if (*skip >= ops) {  // wholly applied before
    *skip -= ops;
    if (e.kind == EventKind::kCleared) Forget(p);
    return absl::OkStatus();
  }
  switch (e.kind) {
    case EventKind::kStored: {
      absl::StatusOr<NamespaceId> nsr = NamespaceFor(p, e);
      if (!nsr.ok()) {
        // Refused (another model, too many adapters): its operations are still consumed, so
        // that a successor's resume count stays right.
        (void)index_->SkipOps(p, index::SkipReason::kRejected, ops - *skip);
        *skip = 0;
        return nsr.status();
      }
      const NamespaceId ns = *nsr;
      if (!e.tokens.empty() && !BlockSizeFits(p, ns, e.block_size, ops - *skip)) {
        *skip = 0;
        return absl::OkStatus();
      }
      // A partly applied event (only after a crash): the blocks already stored stay; store the
      // rest with the last stored block as parent.
      size_t from = static_cast<size_t>(*skip);
      *skip = 0;
      index::StoreRequest req;
      req.ns = ns;
      req.tier = e.tier;
      req.block_size = e.block_size;
      req.parent_engine_hash = from == 0 ? e.parent : std::optional<uint64_t>(e.hashes[from - 1]);
      req.engine_hashes = std::span(e.hashes).subspan(from);
      // Extra keys (docs/block-keys.md): vLLM's per-block entries as published; a cache salt
      // alone (SGLang's metadata, vLLM's cache_salt without extra_keys) goes to the prompt's
      // first block, as vLLM's salt-only extra-keys tuple would.
      std::vector<std::span<const uint8_t>> extra;
      std::vector<uint8_t> salt;
      if (!e.tokens.empty()) {
        req.tokens = std::span(e.tokens).subspan(from * e.block_size);
        for (size_t i = from; i < e.extra_keys.size(); ++i) {
          extra.emplace_back(reinterpret_cast<const uint8_t*>(e.extra_keys[i].data()),
                             e.extra_keys[i].size());
        }
        const bool first_block_bare = e.extra_keys.empty() || e.extra_keys[0].empty();
        if (e.cache_salt && !e.cache_salt->empty() && from == 0 && !e.parent && first_block_bare) {
          salt = index::CacheSaltExtra(*e.cache_salt);
          extra.resize(e.hashes.size());
          extra[0] = salt;
        }
        req.extra = extra;
      }
      absl::Status st = index_->Store(p, req).status();
      if (hash_checker_.enabled() && from == 0) {
        const index::NamespaceSlot* nss = index_->namespace_slot(ns);
        hash_checker_.Observe(p, std::string(nss->model, strnlen(nss->model, sizeof(nss->model))),
                              e, index_->ingest_state(p));
      }
      if (config_.on_applied && !req.engine_hashes.empty()) {
        config_.on_applied({EventKind::kStored, p, ns,
                            static_cast<uint32_t>(req.engine_hashes.size()),
                            index_->ResolveEngineHash(ns, p, req.engine_hashes[0]).value_or(0)});
      }
      return st;
    }
    case EventKind::kRemoved: {
      size_t from = static_cast<size_t>(*skip);
      *skip = 0;
      const auto& used = namespaces_[p];
      for (size_t i = from; i < e.hashes.size(); ++i) {
        std::optional<NamespaceId> ns;
        // The namespace whose mapping knows the hash (removals name no namespace).
        for (NamespaceId cand : used) {
          if (index_->ResolveEngineHash(cand, p, e.hashes[i])) {
            ns = cand;
            break;
          }
        }
        if (!ns) ns = FindAdapterNamespace(p, e.hashes[i]);
        (void)index_->Remove(p, e.tier, e.hashes[i], ns);  // NOT_FOUND is counted there
      }
      if (config_.on_applied && from < e.hashes.size()) {
        NamespaceId base = static_cast<NamespaceId>(index_->publisher_slot(p)->id.ns);
        config_.on_applied({EventKind::kRemoved, p, base,
                            static_cast<uint32_t>(e.hashes.size() - from),
                            index_->ResolveEngineHash(base, p, e.hashes[from]).value_or(0)});
      }
      return absl::OkStatus();
    }
    case EventKind::kCleared:
      *skip = 0;
      Forget(p);
      if (config_.on_applied) {
        config_.on_applied({EventKind::kCleared, p,
                            static_cast<NamespaceId>(index_->publisher_slot(p)->id.ns), 0, 0});
      }
      return index_->ClearPublisher(p);
    case EventKind::kSeqStored:
    case EventKind::kSeqRemoved:
    case EventKind::kRequestFinished:
      return ApplySeq(p, e, skip);
  }
  return absl::OkStatus();
}

absl::Status Applier::ApplySeq(PublisherId p, const Event& e, uint64_t* skip) {
  auto& seqs = sequences_[p];
  size_t& bytes = sequence_bytes_[p];
  if (e.kind == EventKind::kRequestFinished) {
    auto it = seqs.find(e.sequence_id);
    if (it == seqs.end()) return absl::OkStatus();  // it holds nothing: nothing to keep
    SequenceState& s = it->second;
    bytes -= SequenceBytes(s);
    s.request_id.assign(e.request_id, 0, std::min(e.request_id.size(), kMaxRequestIdBytes));
    s.request_id.shrink_to_fit();
    s.finished = true;
    s.succeeded = e.finished;
    bytes += SequenceBytes(s);
    PublishSequenceBytes(p, bytes);
    return absl::OkStatus();
  }
  const PublisherSlot* ps = index_->publisher_slot(p);
  if (ps == nullptr) return absl::NotFoundError("publisher gone");
  NamespaceId ns = static_cast<NamespaceId>(ps->id.ns);
  const index::NamespaceSlot* nss = index_->namespace_slot(ns);
  if (nss == nullptr) return absl::FailedPreconditionError("namespace gone");
  if (e.kind == EventKind::kSeqStored && !e.tokens.empty()) {
    uint64_t left = e.block_numbers.size() > *skip ? e.block_numbers.size() - *skip : 0;
    if (!BlockSizeFits(p, ns, e.block_size, left)) {
      *skip = *skip > e.block_numbers.size() ? *skip - e.block_numbers.size() : 0;
      return absl::OkStatus();
    }
  }
  auto sit = seqs.find(e.sequence_id);
  if (sit == seqs.end()) {
    if (e.kind == EventKind::kSeqRemoved) {  // nothing of it is known: each removal is unknown
      uint64_t left = e.block_numbers.size() > *skip ? e.block_numbers.size() - *skip : 0;
      *skip = *skip > e.block_numbers.size() ? *skip - e.block_numbers.size() : 0;
      if (left > 0) (void)index_->SkipOps(p, index::SkipReason::kUnknownRemove, left);
      return absl::OkStatus();
    }
    sit = seqs.emplace(e.sequence_id, SequenceState{}).first;
    bytes += SequenceBytes(sit->second);
  }
  SequenceState& s = sit->second;
  for (size_t i = 0; i < e.block_numbers.size(); ++i) {
    uint32_t n = e.block_numbers[i];
    if (*skip > 0) {  // applied by a predecessor; the table was lost with it
      --*skip;
      continue;
    }
    if (e.kind == EventKind::kSeqStored) {
      index::BlockKey parent = n == 0 ? nss->root : (n - 1 < s.blocks.size() ? s.blocks[n - 1] : 0);
      if (parent == 0) {
        (void)index_->SkipOps(p, index::SkipReason::kOrphan);  // block n-1 never stored
        continue;
      }
      StoreSeqBlock(p, ns, s, n,
                    index::ChainBlockKey(parent, std::span(e.tokens).subspan(
                                                     size_t{i} * e.block_size, e.block_size)),
                    bytes);
    } else {
      index::BlockKey key = n < s.blocks.size() ? s.blocks[n] : 0;
      if (key == 0) {
        (void)index_->SkipOps(p, index::SkipReason::kUnknownRemove);
        continue;
      }
      s.blocks[n] = 0;
      --s.stored;
      ReleaseKey(p, ns, key, bytes);
    }
  }
  // Trailing removed blocks take no room; a sequence that holds nothing is forgotten.
  bytes -= SequenceBytes(s);
  while (!s.blocks.empty() && s.blocks.back() == 0) s.blocks.pop_back();
  if (s.stored == 0) {
    seqs.erase(sit);
  } else {
    if (s.blocks.size() < s.blocks.capacity() / 4) s.blocks.shrink_to_fit();
    bytes += SequenceBytes(s);
  }
  PublishSequenceBytes(p, bytes);
  return absl::OkStatus();
}

// Block number n of sequence `s` holds `key` now. The key is a content hash, so it doubles as
// the engine hash; the index holds it once for the publisher and further sequences holding it
// are counted in key_refs_. What would take the table past its budget is refused (and counted):
// the entry's room (the vector grown to n + 1, doubling past its capacity as std::vector does)
// and, for a key new to the publisher, its count.
void Applier::StoreSeqBlock(PublisherId p, NamespaceId ns, SequenceState& s, uint32_t n,
                            index::BlockKey key, size_t& bytes) {
  if (n < s.blocks.size() && s.blocks[n] == key) {  // stored again under the same number
    (void)index_->SkipOps(p, index::SkipReason::kSharedStore);
    return;
  }
  auto& refs = key_refs_[p];
  const bool new_key = refs.find(key) == refs.end();
  const size_t cap = s.blocks.capacity();
  const size_t want = n + 1 > cap ? std::max<size_t>(n + 1, 2 * cap) : cap;
  const size_t more = (want - cap) * sizeof(index::BlockKey) + (new_key ? kKeyRefBytes : 0);
  if (bytes + more > config_.max_sequence_bytes) {
    (void)index_->SkipOps(p, index::SkipReason::kBudget);
    return;
  }
  if (s.blocks.size() <= n) {
    bytes -= SequenceBytes(s);
    s.blocks.reserve(want);
    s.blocks.resize(n + 1, 0);
    bytes += SequenceBytes(s);
  }
  if (s.blocks[n] != 0) {
    ReleaseKey(p, ns, s.blocks[n], bytes);  // replaced by another block
  } else {
    ++s.stored;
  }
  s.blocks[n] = key;
  if (refs[key]++ > 0) {
    (void)index_->SkipOps(p, index::SkipReason::kSharedStore);
    return;
  }
  bytes += kKeyRefBytes;
  if (index_->StoreBlock(p, index::kGpu, key, key).ok() && config_.on_applied)
    config_.on_applied({EventKind::kSeqStored, p, ns, 1, key});
}

// One (sequence, block number) entry of `key` goes: the index drops the block with the last.
void Applier::ReleaseKey(PublisherId p, NamespaceId ns, index::BlockKey key, size_t& bytes) {
  auto& refs = key_refs_[p];
  auto it = refs.find(key);
  if (it != refs.end() && it->second > 1) {
    --it->second;
    (void)index_->SkipOps(p, index::SkipReason::kSharedRemove);
    return;
  }
  if (it != refs.end()) {
    refs.erase(it);
    bytes -= kKeyRefBytes;
  }
  if (index_->Remove(p, index::kGpu, key, ns).ok() && config_.on_applied)
    config_.on_applied({EventKind::kSeqRemoved, p, ns, 1, key});
}

void Applier::PublishSequenceBytes(PublisherId p, size_t bytes) {
  if (index::PublisherIngestState* s = index_->ingest_state(p))
    index::St(s->sequence_bytes, uint64_t{bytes});
}

}  // namespace kvidx::ingest
