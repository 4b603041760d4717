#include "tools/sim/engine.h"

#include <xxhash.h>

#include <chrono>
#include <thread>

#include <msgpack.hpp>
#include <zmq_addon.hpp>

namespace kvidx::sim {

bool ParseEncoding(const std::string& s, Encoding* out) {
  static const std::pair<const char*, Encoding> kNames[] = {
      {"vllm-array", Encoding::kVllmArray}, {"vllm-map", Encoding::kVllmMap},
      {"vllm-bytes", Encoding::kVllmBytes}, {"vllm-0.9", Encoding::kVllmV090},
      {"sglang", Encoding::kSglang},        {"aibrix", Encoding::kAibrix}};
  for (auto& [n, e] : kNames) {
    if (s == n) {
      *out = e;
      return true;
    }
  }
  return false;
}

const char* EncodingName(Encoding e) {
  switch (e) {
    case Encoding::kVllmArray:
      return "vllm-array";
    case Encoding::kVllmMap:
      return "vllm-map";
    case Encoding::kVllmBytes:
      return "vllm-bytes";
    case Encoding::kVllmV090:
      return "vllm-0.9";
    case Encoding::kSglang:
      return "sglang";
    case Encoding::kAibrix:
      return "aibrix";
  }
  return "?";
}

const char* DialectFor(Encoding e) {
  switch (e) {
    case Encoding::kSglang:
      return "sglang";
    case Encoding::kAibrix:
      return "aibrix";
    default:
      return "vllm";
  }
}

std::vector<SimBlock> MakePrompt(const std::vector<uint64_t>& block_ids, uint32_t block_size) {
  std::vector<SimBlock> out;
  uint64_t parent = 0;
  for (uint64_t id : block_ids) {
    SimBlock b;
    b.tokens.resize(block_size);
    for (uint32_t k = 0; k < block_size; ++k) {
      b.tokens[k] = static_cast<uint32_t>((id * 2654435761u + k * 40503u) % 151000u);
    }
    // Content chained, seeded like a fixed-seed engine: the same prefix hashes the same on
    // every pod. 0 is reserved for "no parent".
    b.engine_hash = XXH3_64bits_withSeed(b.tokens.data(), b.tokens.size() * 4, parent ^ 0x5EED);
    if (b.engine_hash == 0) b.engine_hash = 1;
    b.parent_hash = parent;
    parent = b.engine_hash;
    out.push_back(std::move(b));
  }
  return out;
}

SimEngine::SimEngine(zmq::context_t& ctx, EngineOptions options)
    : options_(std::move(options)), pub_(ctx, zmq::socket_type::pub), rng_(options_.seed) {
  pub_.set(zmq::sockopt::sndhwm, 100000);
  pub_.set(zmq::sockopt::linger, 0);
  // An endpoint with port "*" takes a free port; the options then name the bound one.
  pub_.bind(options_.pub_endpoint);
  options_.pub_endpoint = pub_.get(zmq::sockopt::last_endpoint);
  if (!options_.replay_endpoint.empty()) {
    router_ = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::router);
    router_->set(zmq::sockopt::linger, 0);
    router_->bind(options_.replay_endpoint);
    options_.replay_endpoint = router_->get(zmq::sockopt::last_endpoint);
  }
}

std::vector<uint64_t> SimEngine::Cached() const { return {lru_.begin(), lru_.end()}; }

void SimEngine::Serve(const std::vector<SimBlock>& prompt) {
  ++batch_counter_;
  const Faults& f = options_.faults;
  if (f.restart_every != 0 && batch_counter_ % f.restart_every == 0 && seq_ > 0) {
    // The engine process restarts: empty cache, sequence from 0, empty replay buffer.
    ++restarts_;
    seq_ = 0;
    ring_.clear();
    lru_.clear();
    cached_.clear();
  }
  Pending p;
  for (const SimBlock& b : prompt) {
    auto it = cached_.find(b.engine_hash);
    if (it != cached_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      continue;
    }
    // The parent must be cached for a store to chain; an engine evicts leaves first, so a
    // missing parent means the rest of the prompt is recomputed and stored too.
    lru_.push_front(b.engine_hash);
    cached_[b.engine_hash] = lru_.begin();
    p.stored.push_back(b);
  }
  // Evict past capacity, never a block of this request.
  while (lru_.size() > options_.cache_blocks) {
    uint64_t victim = lru_.back();
    bool in_request = false;
    for (const SimBlock& b : prompt) in_request |= b.engine_hash == victim;
    if (in_request) break;
    lru_.pop_back();
    cached_.erase(victim);
    p.removed.push_back(victim);
  }
  if (p.stored.empty() && p.removed.empty()) return;
  Send(p);
}

void SimEngine::ClearAll() {
  ++batch_counter_;
  lru_.clear();
  cached_.clear();
  Pending p;
  p.cleared = true;
  Send(p);
}

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

std::vector<uint8_t> SimEngine::Encode(const Pending& p) const {
  const Encoding e = options_.encoding;
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  // Stored blocks go out as runs: consecutive blocks whose parent is the previous block.
  std::vector<std::vector<const SimBlock*>> runs;
  for (const SimBlock& b : p.stored) {
    if (runs.empty() || runs.back().back()->engine_hash != b.parent_hash) runs.emplace_back();
    runs.back().push_back(&b);
  }
  size_t n_events = runs.size() + p.removed.size() + (p.cleared ? 1 : 0);
  double ts =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  if (e == Encoding::kAibrix) {
    pk.pack_map(1);
    PackStr(pk, "events");
    pk.pack_array(static_cast<uint32_t>(n_events));
    for (auto& run : runs) {
      bool parent = run[0]->parent_hash != 0;
      pk.pack_map(parent ? 5 : 4);
      PackStr(pk, "type");
      PackStr(pk, "BLOCK_STORED");
      PackStr(pk, "timestamp");
      pk.pack(ts);
      PackStr(pk, "block_hashes");
      pk.pack_array(static_cast<uint32_t>(run.size()));
      for (auto* b : run) pk.pack(static_cast<int64_t>(b->engine_hash));
      PackStr(pk, "token_ids");
      pk.pack_array(static_cast<uint32_t>(run.size()));
      for (auto* b : run) pk.pack(b->tokens);
      if (parent) {
        PackStr(pk, "parent_block_hash");
        pk.pack(static_cast<int64_t>(run[0]->parent_hash));
      }
    }
    for (uint64_t h : p.removed) {
      pk.pack_map(3);
      PackStr(pk, "type");
      PackStr(pk, "BLOCK_REMOVED");
      PackStr(pk, "timestamp");
      pk.pack(ts);
      PackStr(pk, "block_hashes");
      pk.pack_array(1);
      pk.pack(static_cast<int64_t>(h));
    }
    if (p.cleared) {
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
  for (auto& run : runs) {
    std::vector<uint32_t> tokens;
    for (auto* b : run) tokens.insert(tokens.end(), b->tokens.begin(), b->tokens.end());
    auto pack_hashes = [&] {
      pk.pack_array(static_cast<uint32_t>(run.size()));
      for (auto* b : run) PackHash(pk, b->engine_hash, e);
    };
    auto pack_parent = [&] {
      if (run[0]->parent_hash == 0)
        pk.pack_nil();
      else
        PackHash(pk, run[0]->parent_hash, e);
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
      pk.pack(options_.block_size);
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
      pk.pack(options_.block_size);
      pk.pack_nil();
      PackStr(pk, "GPU");
    } else if (v090) {
      pk.pack_array(6);
      PackStr(pk, "BlockStored");
      pack_hashes();
      pack_parent();
      pk.pack(tokens);
      pk.pack(options_.block_size);
      pk.pack_nil();
    } else {
      pk.pack_array(12);
      PackStr(pk, "BlockStored");
      pack_hashes();
      pack_parent();
      pk.pack(tokens);
      pk.pack(options_.block_size);
      pk.pack_nil();
      PackStr(pk, "GPU");
      pk.pack_nil();
      pk.pack_array(static_cast<uint32_t>(run.size()));
      for (size_t i = 0; i < run.size(); ++i) pk.pack_nil();
      pk.pack(0);
      PackStr(pk, "full_attention");
      pk.pack_nil();
    }
  }
  for (uint64_t h : p.removed) {
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
  if (p.cleared) {
    if (map_events) {
      pk.pack_map(1);
      PackStr(pk, "type");
      PackStr(pk, "AllBlocksCleared");
    } else {
      pk.pack_array(1);
      PackStr(pk, "AllBlocksCleared");
    }
  }
  if (!v090) pk.pack(options_.dp_rank);
  return {buf.data(), buf.data() + buf.size()};
}

void SimEngine::SendGarbage() {
  std::vector<uint8_t> junk(1 + rng_() % 64);
  for (auto& b : junk) b = static_cast<uint8_t>(rng_());
  // One frame of junk, then three frames with a 5-byte sequence: neither is a batch.
  pub_.send(zmq::buffer(junk), zmq::send_flags::dontwait);
  pub_.send(zmq::buffer(options_.topic), zmq::send_flags::sndmore);
  pub_.send(zmq::buffer(junk.data(), std::min<size_t>(5, junk.size())), zmq::send_flags::sndmore);
  pub_.send(zmq::buffer(junk), zmq::send_flags::dontwait);
}

void SimEngine::Send(const Pending& p) {
  const Faults& f = options_.faults;
  if (f.garbage_every != 0 && batch_counter_ % f.garbage_every == 0) SendGarbage();
  if (f.stall_every != 0 && batch_counter_ % f.stall_every == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(f.stall_ms));
  }
  std::vector<uint8_t> payload = Encode(p);
  uint64_t seq = seq_++;
  uint8_t seq8[8];
  for (int i = 0; i < 8; ++i) seq8[i] = static_cast<uint8_t>(seq >> (56 - 8 * i));
  ring_.emplace_back(seq, payload);
  while (ring_.size() > options_.replay_buffer) ring_.pop_front();
  if (f.drop_every != 0 && batch_counter_ % f.drop_every == 0) return;  // lost on the way
  pub_.send(zmq::buffer(options_.topic), zmq::send_flags::sndmore);
  pub_.send(zmq::buffer(seq8, 8), zmq::send_flags::sndmore);
  pub_.send(zmq::buffer(payload), zmq::send_flags::none);
}

void SimEngine::PollReplay() {
  if (!router_) return;
  for (int i = 0; i < 16; ++i) {
    std::vector<zmq::message_t> req;
    if (!zmq::recv_multipart(*router_, std::back_inserter(req), zmq::recv_flags::dontwait)) return;
    // [identity, "", start_seq]; anything else is ignored, as the engines do.
    if (req.size() != 3 || req[1].size() != 0 || req[2].size() == 0 || req[2].size() > 8) continue;
    uint64_t start = 0;
    for (size_t k = 0; k < req[2].size(); ++k)
      start = (start << 8) | static_cast<const uint8_t*>(req[2].data())[k];
    auto send_one = [&](uint64_t seq, const std::vector<uint8_t>& payload) {
      uint8_t seq8[8];
      for (int k = 0; k < 8; ++k) seq8[k] = static_cast<uint8_t>(seq >> (56 - 8 * k));
      router_->send(zmq::buffer(req[0].data(), req[0].size()), zmq::send_flags::sndmore);
      router_->send(zmq::message_t(), zmq::send_flags::sndmore);
      if (options_.replay_with_topic) {
        router_->send(zmq::buffer(seq == ~uint64_t{0} ? std::string() : options_.topic),
                      zmq::send_flags::sndmore);
      }
      router_->send(zmq::buffer(seq8, 8), zmq::send_flags::sndmore);
      router_->send(zmq::buffer(payload), zmq::send_flags::dontwait);
    };
    for (const auto& [seq, payload] : ring_) {
      if (seq >= start) send_one(seq, payload);
    }
    send_one(~uint64_t{0}, {});
  }
}

}  // namespace kvidx::sim
