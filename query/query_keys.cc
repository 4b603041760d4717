// The keys of a Lookup query that are not plain token chains: per-block extra keys and cache
// salts (docs/block-keys.md), and KVBM lineage hashes (wire/lineage_hash.h).
#include <algorithm>

#include "absl/strings/str_cat.h"

#include "query/service.h"
#include "wire/lineage_hash.h"

namespace kvidx::query {

using index::Ld;

grpc::Status KvIndexService::KeysWithExtra(const v1::LookupQuery& q, index::BlockKey root,
                                           std::span<const uint32_t> tokens, uint32_t bs,
                                           std::vector<index::BlockKey>* keys) {
  if (q.block_extra_size() == 0 && q.cache_salt().empty()) {
    *keys = index::ChainBlockKeys(root, tokens, bs);
    return grpc::Status::OK;
  }
  const size_t blocks = bs == 0 ? 0 : tokens.size() / bs;
  if (static_cast<size_t>(q.block_extra_size()) > std::max<size_t>(blocks, 1)) {
    return Error(
        grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_EXTRA_KEYS",
        absl::StrCat(q.block_extra_size(), " block_extra entries for ", blocks, " full blocks"));
  }
  if (!q.cache_salt().empty() && q.block_extra_size() > 0 && !q.block_extra(0).empty()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "SALT_AND_EXTRA",
                 "cache_salt and a non-empty block_extra[0] both name block 0's extra keys; put "
                 "the salt in block_extra[0] as the engine publishes it");
  }
  std::vector<std::span<const uint8_t>> extra;
  extra.reserve(std::max(q.block_extra_size(), 1));
  for (const std::string& e : q.block_extra()) {
    extra.emplace_back(reinterpret_cast<const uint8_t*>(e.data()), e.size());
  }
  const std::vector<uint8_t> salt =
      q.cache_salt().empty() ? std::vector<uint8_t>() : index::CacheSaltExtra(q.cache_salt());
  if (!salt.empty()) {
    if (extra.empty()) extra.emplace_back();
    extra[0] = salt;
  }
  *keys = index::ChainBlockKeys(root, tokens, bs, extra);
  return grpc::Status::OK;
}

namespace {

// The fields of one KvbmHash message; nullopt if it names none.
std::optional<wire::LineageHash> LineageOf(const v1::KvbmHash& h) {
  if (h.u128().empty()) return wire::CanonicalLineageHash(h.current(), h.parent(), h.position());
  if (h.u128().size() != 16) return std::nullopt;
  auto [hi, lo] = wire::U128FromBigEndian(reinterpret_cast<const uint8_t*>(h.u128().data()), 16);
  return wire::UnpackLineageHash(hi, lo);
}

}  // namespace

grpc::Status KvIndexService::KvbmKeys(const v1::LookupQuery& q, index::NamespaceId ns, uint32_t bs,
                                      std::vector<index::BlockKey>* keys,
                                      std::vector<uint32_t>* depths, v1::LookupResult* out) {
  out->set_input("kvbm_hashes");
  const auto& hashes = q.kvbm_hashes().hashes();
  if (uint64_t{static_cast<uint64_t>(hashes.size())} * std::max(1u, bs) > config_.max_tokens) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_BLOCKS",
                 absl::StrCat(hashes.size(), " KVBM hashes is more than max_tokens allows"));
  }
  const index::NamespaceSlot* nss = index_->namespace_slot(ns);
  const bool engine_keyed = nss != nullptr && (Ld(nss->flags) & index::kKeyByEngineHash) != 0;
  const index::BlockKey root = nss != nullptr ? Ld(nss->root) : 0;
  keys->reserve(hashes.size());
  depths->reserve(hashes.size());
  uint32_t deepest = 0;
  for (int i = 0; i < hashes.size(); ++i) {
    std::optional<wire::LineageHash> h = LineageOf(hashes[i]);
    if (!h) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "BAD_KVBM_HASH",
                   absl::StrCat("kvbm_hashes[", i,
                                "]: u128 must be 16 bytes of mode 0-2; position below 2^24"));
    }
    const uint64_t e = wire::LineageEngineHash(*h);
    std::optional<index::BlockKey> k =
        engine_keyed ? std::optional<index::BlockKey>(index::EngineHashKey(root, e))
                     : index_->ResolveEngineHash(ns, index::PrefixIndex::kAnyPublisher, e);
    deepest = std::max(deepest, h->position + 1);
    if (!k) continue;  // unknown here; a deeper hash may still be held
    keys->push_back(*k);
    depths->push_back(h->position + 1);
  }
  out->set_prompt_blocks(deepest);
  return grpc::Status::OK;
}

}  // namespace kvidx::query
