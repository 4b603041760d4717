#include "ingest/engine_hash.h"

#include <openssl/evp.h>

#include <algorithm>

namespace kvidx::ingest {
namespace {

// CBOR (RFC 8949) heads, canonical (shortest) form: major type in the top 3 bits.
void Head(std::vector<uint8_t>& out, uint8_t major, uint64_t n) {
  const uint8_t m = static_cast<uint8_t>(major << 5);
  auto be = [&](int bytes) {
    for (int b = bytes - 1; b >= 0; --b) out.push_back(static_cast<uint8_t>(n >> (8 * b)));
  };
  if (n < 24) {
    out.push_back(static_cast<uint8_t>(m | n));
  } else if (n < 0x100) {
    out.push_back(m | 24);
    be(1);
  } else if (n < 0x10000) {
    out.push_back(m | 25);
    be(2);
  } else if (n < 0x100000000ULL) {
    out.push_back(m | 26);
    be(4);
  } else {
    out.push_back(m | 27);
    be(8);
  }
}

Sha256Digest Sha256(const std::vector<uint8_t>& bytes) {
  Sha256Digest d{};
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), d.data(), &len, EVP_sha256(), nullptr);
  return d;
}

}  // namespace

Sha256Digest VllmNoneHash(std::string_view seed) {
  std::vector<uint8_t> cbor;
  Head(cbor, 3, seed.size());  // text string
  cbor.insert(cbor.end(), seed.begin(), seed.end());
  return Sha256(cbor);
}

Sha256Digest VllmBlockDigest(const Sha256Digest& parent, std::span<const uint32_t> tokens) {
  std::vector<uint8_t> cbor;
  cbor.reserve(40 + tokens.size() * 5);
  Head(cbor, 4, 3);  // [parent, tokens, extra]
  Head(cbor, 2, parent.size());
  cbor.insert(cbor.end(), parent.begin(), parent.end());
  Head(cbor, 4, tokens.size());
  for (uint32_t t : tokens) Head(cbor, 0, t);
  cbor.push_back(0xf6);  // null: no extra keys
  return Sha256(cbor);
}

uint64_t VllmEventInt(const Sha256Digest& d) {
  uint64_t v = 0;
  for (size_t i = d.size() - 8; i < d.size(); ++i) v = v << 8 | d[i];
  return v;
}

EngineHashChecker::EngineHashChecker(const std::map<std::string, HashCheckConfig>& models) {
  for (auto& [name, c] : models) models_[name] = Model{c, VllmNoneHash(c.seed)};
}

void EngineHashChecker::Forget(index::PublisherId p) { publishers_.erase(p); }

void EngineHashChecker::Observe(index::PublisherId p, const std::string& model, const Event& e,
                                index::PublisherIngestState* slot) {
  auto m = models_.find(model);
  if (m == models_.end() || slot == nullptr) return;
  // Checkable: token ids of whole blocks, nothing else in the preimage.
  if (e.tokens.empty() || e.block_size == 0 || e.tokens.size() != e.hashes.size() * e.block_size ||
      !e.extra_keys.empty() || e.lora_name || e.lora_id || e.cache_salt) {
    return;
  }
  PerPublisher& pp = publishers_[p];
  Sha256Digest parent;
  if (!e.parent) {
    if (pp.starts++ % std::max(1u, m->second.config.every) != 0) return;
    parent = m->second.none_hash;
  } else {
    auto known = pp.digests.find(*e.parent);
    if (known == pp.digests.end()) return;  // its chain was not sampled, or is forgotten
    parent = known->second;
  }
  uint64_t checked = 0, mismatched = 0, last_bad = 0;
  for (size_t i = 0; i < e.hashes.size(); ++i) {
    parent = VllmBlockDigest(parent, std::span(e.tokens).subspan(i * e.block_size, e.block_size));
    ++checked;
    if (VllmEventInt(parent) != e.hashes[i]) {
      ++mismatched;
      last_bad = e.hashes[i];
      break;  // its children chain from a digest the engine did not compute
    }
    if (pp.digests.emplace(e.hashes[i], parent).second) pp.order.push_back(e.hashes[i]);
    while (pp.order.size() > kRemembered) {
      pp.digests.erase(pp.order.front());
      pp.order.pop_front();
    }
  }
  index::AddRelaxed(slot->hash_checks, checked);
  if (mismatched != 0) {
    index::AddRelaxed(slot->hash_mismatches, mismatched);
    index::St(slot->last_hash_mismatch, last_bad);
  }
}

}  // namespace kvidx::ingest
