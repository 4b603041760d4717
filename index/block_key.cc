#include "index/block_key.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <cstring>
#include <string>

namespace kvidx::index {
namespace {

// Tokens are hashed as little-endian u32. On a big-endian host they would need swapping; kvidx
// only builds for little-endian targets (checked below), so the token array is hashed in place.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "kvidx block keys assume little-endian");

constexpr uint32_t kExtraMarker = 0xFFFFFFFFu;

}  // namespace

BlockKey NamespaceRoot(std::string_view model, std::string_view lora_name) {
  std::string buf;
  buf.reserve(13 + model.size() + lora_name.size());
  buf.append("kvidx-ns-v1");
  buf.push_back('\0');
  buf.append(model);
  buf.push_back('\0');
  buf.append(lora_name);
  return XXH3_64bits_withSeed(buf.data(), buf.size(), kRootSeed);
}

BlockKey ChainBlockKey(BlockKey parent, std::span<const uint32_t> tokens,
                       std::span<const uint8_t> extra) {
  if (extra.empty()) {
    return XXH3_64bits_withSeed(tokens.data(), tokens.size_bytes(), parent);
  }
  // Streaming keeps the bytes identical to hashing the concatenation.
  XXH3_state_t state;
  XXH3_64bits_reset_withSeed(&state, parent);
  XXH3_64bits_update(&state, tokens.data(), tokens.size_bytes());
  XXH3_64bits_update(&state, &kExtraMarker, sizeof(kExtraMarker));
  XXH3_64bits_update(&state, extra.data(), extra.size());
  return XXH3_64bits_digest(&state);
}

BlockKey EngineHashKey(BlockKey root, uint64_t engine_hash) {
  return XXH3_64bits_withSeed(&engine_hash, sizeof(engine_hash), root);
}

std::vector<BlockKey> ChainBlockKeys(BlockKey parent, std::span<const uint32_t> tokens,
                                     uint32_t block_size) {
  std::vector<BlockKey> keys;
  if (block_size == 0) return keys;
  size_t n = tokens.size() / block_size;
  keys.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    parent = ChainBlockKey(parent, tokens.subspan(i * block_size, block_size));
    keys.push_back(parent);
  }
  return keys;
}

std::vector<BlockKey> ChainBlockKeys(BlockKey parent, std::span<const uint32_t> tokens,
                                     uint32_t block_size,
                                     std::span<const std::span<const uint8_t>> extra) {
  std::vector<BlockKey> keys;
  if (block_size == 0) return keys;
  size_t n = tokens.size() / block_size;
  keys.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    parent = ChainBlockKey(parent, tokens.subspan(i * block_size, block_size),
                           i < extra.size() ? extra[i] : std::span<const uint8_t>());
    keys.push_back(parent);
  }
  return keys;
}

std::vector<uint8_t> CacheSaltExtra(std::string_view salt) {
  const size_t n = salt.size();
  uint8_t head[6] = {0x91};  // fixarray of 1, then the string's header
  size_t len = 1;
  auto be = [&](int bytes) {
    for (int b = bytes - 1; b >= 0; --b) head[len++] = static_cast<uint8_t>(n >> (8 * b));
  };
  if (n < 32) {
    head[len++] = static_cast<uint8_t>(0xa0 | n);  // fixstr
  } else if (n < 256) {
    head[len++] = 0xd9;  // str8
    be(1);
  } else if (n < 65536) {
    head[len++] = 0xda;  // str16
    be(2);
  } else {
    head[len++] = 0xdb;  // str32
    be(4);
  }
  std::vector<uint8_t> out(head, head + len);
  out.insert(out.end(), salt.begin(), salt.end());
  return out;
}

}  // namespace kvidx::index
