#include "tools/sim/engine.h"

#include <xxhash.h>

#include <chrono>
#include <thread>

#include <msgpack.hpp>
#include <zmq_addon.hpp>

#include "tools/sim/encoder.h"

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

std::vector<uint8_t> SimEngine::Encode(const Pending& p) const {
  // Stored blocks go out as runs: consecutive blocks whose parent is the previous block.
  BatchContent c;
  for (const SimBlock& b : p.stored) {
    if (c.runs.empty() || c.runs.back().hashes.back() != b.parent_hash) {
      c.runs.push_back(StoredRun{{}, b.parent_hash, {}});
    }
    c.runs.back().hashes.push_back(b.engine_hash);
    c.runs.back().tokens.insert(c.runs.back().tokens.end(), b.tokens.begin(), b.tokens.end());
  }
  c.removed = p.removed;
  c.cleared = p.cleared;
  c.dp_rank = options_.dp_rank;
  double ts =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  return EncodeBatch(options_.encoding, ts, options_.block_size, c);
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
