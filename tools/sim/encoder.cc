#include "tools/sim/encoder.h"

#include <msgpack.hpp>

namespace kvidx::sim {

namespace {

void PackHash(msgpack::packer<msgpack::sbuffer>& pk, uint64_t h, Encoding e) {
  if (e == Encoding::kVllmBytes || e == Encoding::kSglang) {
    // A 32-byte digest whose folded 64 bits are h: the last 8 bytes for vLLM, the first 8 for
    // SGLang.
    uint8_t d[32];
    for (int i = 0; i < 32; ++i) d[i] = static_cast<uint8_t>(0x40 + i);
    int at = e == Encoding::kSglang ? 0 : 24;
    for (int i = 0; i < 8; ++i) d[at + i] = static_cast<uint8_t>(h >> (56 - 8 * i));
    pk.pack_bin(32);
    pk.pack_bin_body(reinterpret_cast<const char*>(d), 32);
  } else {
    pk.pack(h);
  }
}

void PackStr(msgpack::packer<msgpack::sbuffer>& pk, const std::string& s) { pk.pack(s); }

}  // namespace

std::vector<uint8_t> EncodeBatch(Encoding e, double ts, uint32_t block_size,
                                 const BatchContent& c) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  size_t n_events = c.runs.size() + c.removed.size() + (c.cleared ? 1 : 0);
  if (e == Encoding::kAibrix) {
    pk.pack_map(1);
    PackStr(pk, "events");
    pk.pack_array(static_cast<uint32_t>(n_events));
    for (const StoredRun& run : c.runs) {
      bool parent = run.parent != 0;
      pk.pack_map(parent ? 5 : 4);
      PackStr(pk, "type");
      PackStr(pk, "BLOCK_STORED");
      PackStr(pk, "timestamp");
      pk.pack(ts);
      PackStr(pk, "block_hashes");
      pk.pack_array(static_cast<uint32_t>(run.hashes.size()));
      for (uint64_t h : run.hashes) pk.pack(static_cast<int64_t>(h));
      PackStr(pk, "token_ids");
      pk.pack_array(static_cast<uint32_t>(run.hashes.size()));
      for (size_t i = 0; i < run.hashes.size(); ++i) {
        pk.pack(std::vector<uint32_t>(run.tokens.begin() + i * block_size,
                                      run.tokens.begin() + (i + 1) * block_size));
      }
      if (parent) {
        PackStr(pk, "parent_block_hash");
        pk.pack(static_cast<int64_t>(run.parent));
      }
    }
    for (uint64_t h : c.removed) {
      pk.pack_map(3);
      PackStr(pk, "type");
      PackStr(pk, "BLOCK_REMOVED");
      PackStr(pk, "timestamp");
      pk.pack(ts);
      PackStr(pk, "block_hashes");
      pk.pack_array(1);
      pk.pack(static_cast<int64_t>(h));
    }
    if (c.cleared) {
      pk.pack_map(2);
      PackStr(pk, "type");
      PackStr(pk, "ALL_BLOCKS_CLEARED");
      PackStr(pk, "timestamp");
      pk.pack(ts);
    }
    return {buf.data(), buf.data() + buf.size()};
  }
  const bool v090 = e == Encoding::kVllmV090;
  const bool map_events = e == Encoding::kVllmMap || e == Encoding::kVllmBytes;
  pk.pack_array(v090 ? 2 : 3);
  pk.pack(ts);
  pk.pack_array(static_cast<uint32_t>(n_events));
  for (const StoredRun& run : c.runs) {
    const std::vector<uint32_t>& tokens = run.tokens;
    auto pack_hashes = [&] {
      pk.pack_array(static_cast<uint32_t>(run.hashes.size()));
      for (uint64_t h : run.hashes) PackHash(pk, h, e);
    };
    auto pack_parent = [&] {
      if (run.parent == 0)
        pk.pack_nil();
      else
        PackHash(pk, run.parent, e);
    };
    if (map_events) {
      pk.pack_map(10);
      PackStr(pk, "type");
      PackStr(pk, "BlockStored");
      PackStr(pk, "block_hashes");
      pack_hashes();
      PackStr(pk, "parent_block_hash");
      pack_parent();
      PackStr(pk, "token_ids");
      pk.pack(tokens);
      PackStr(pk, "block_size");
      pk.pack(block_size);
      PackStr(pk, "lora_id");
      pk.pack_nil();
      PackStr(pk, "medium");
      PackStr(pk, "GPU");
      PackStr(pk, "lora_name");
      pk.pack_nil();
      PackStr(pk, "group_idx");
      pk.pack(0);
      PackStr(pk, "kv_cache_spec_kind");
      PackStr(pk, "full_attention");
    } else if (e == Encoding::kSglang) {
      pk.pack_array(7);
      PackStr(pk, "BlockStored");
      pack_hashes();
      pack_parent();
      pk.pack(tokens);
      pk.pack(block_size);
      pk.pack_nil();
      PackStr(pk, "GPU");
    } else if (v090) {
      pk.pack_array(6);
      PackStr(pk, "BlockStored");
      pack_hashes();
      pack_parent();
      pk.pack(tokens);
      pk.pack(block_size);
      pk.pack_nil();
    } else {
      pk.pack_array(12);
      PackStr(pk, "BlockStored");
      pack_hashes();
      pack_parent();
      pk.pack(tokens);
      pk.pack(block_size);
      pk.pack_nil();
      PackStr(pk, "GPU");
      pk.pack_nil();
      pk.pack_array(static_cast<uint32_t>(run.hashes.size()));
      for (size_t i = 0; i < run.hashes.size(); ++i) pk.pack_nil();
      pk.pack(0);
      PackStr(pk, "full_attention");
      pk.pack_nil();
    }
  }
  for (uint64_t h : c.removed) {
    if (map_events) {
      pk.pack_map(4);
      PackStr(pk, "type");
      PackStr(pk, "BlockRemoved");
      PackStr(pk, "block_hashes");
      pk.pack_array(1);
      PackHash(pk, h, e);
      PackStr(pk, "medium");
      PackStr(pk, "GPU");
      PackStr(pk, "group_idx");
      pk.pack(0);
    } else if (e == Encoding::kSglang) {
      pk.pack_array(3);
      PackStr(pk, "BlockRemoved");
      pk.pack_array(1);
      PackHash(pk, h, e);
      PackStr(pk, "GPU");
    } else if (v090) {
      pk.pack_array(2);
      PackStr(pk, "BlockRemoved");
      pk.pack_array(1);
      PackHash(pk, h, e);
    } else {
      pk.pack_array(4);
      PackStr(pk, "BlockRemoved");
      pk.pack_array(1);
      PackHash(pk, h, e);
      PackStr(pk, "GPU");
      pk.pack(0);
    }
  }
  if (c.cleared) {
    if (map_events) {
      pk.pack_map(1);
      PackStr(pk, "type");
      PackStr(pk, "AllBlocksCleared");
    } else {
      pk.pack_array(1);
      PackStr(pk, "AllBlocksCleared");
    }
  }
  if (!v090) pk.pack(c.dp_rank);
  return {buf.data(), buf.data() + buf.size()};
}

std::vector<uint8_t> EncodeSeqIdBatch(const std::vector<SeqIdEvent>& events, bool cleared) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(1);
  PackStr(pk, "events");
  pk.pack_array(static_cast<uint32_t>(events.size() + (cleared ? 1 : 0)));
  for (const SeqIdEvent& e : events) {
    pk.pack_map(e.block_tokens.empty() ? 2 : 3);
    PackStr(pk, "sequence_id");
    pk.pack(e.sequence_id);
    PackStr(pk, "block_numbers");
    pk.pack(e.block_numbers);
    if (!e.block_tokens.empty()) {
      PackStr(pk, "block_token_ids");
      pk.pack(e.block_tokens);
    }
  }
  if (cleared) {
    pk.pack_map(1);
    PackStr(pk, "type");
    PackStr(pk, "cache_cleared");
  }
  return {buf.data(), buf.data() + buf.size()};
}

namespace {
void PackU128(msgpack::packer<msgpack::sbuffer>& pk, uint64_t hi, uint64_t lo) {
  uint8_t b[16];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(hi >> (56 - 8 * i));
  for (int i = 0; i < 8; ++i) b[8 + i] = static_cast<uint8_t>(lo >> (56 - 8 * i));
  pk.pack_bin(16);
  pk.pack_bin_body(reinterpret_cast<const char*>(b), 16);
}
}  // namespace

std::vector<uint8_t> EncodeKvbm(bool create, bool shutdown,
                                const std::vector<wire::LineageHash>& hashes, uint64_t instance_hi,
                                uint64_t instance_lo) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(2);
  PackStr(pk, "events");
  if (shutdown) {
    PackStr(pk, "Shutdown");
  } else {
    pk.pack_map(1);
    PackStr(pk, create ? "Create" : "Remove");
    pk.pack_array(static_cast<uint32_t>(hashes.size()));
    for (const wire::LineageHash& h : hashes) {
      auto v = wire::PackLineageHash(h);
      PackU128(pk, v ? v->first : 0, v ? v->second : 0);
    }
  }
  PackStr(pk, "instance_id");
  PackU128(pk, instance_hi, instance_lo);
  return {buf.data(), buf.data() + buf.size()};
}

}  // namespace kvidx::sim
