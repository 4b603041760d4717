#include "tools/sim/engine.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

#include <msgpack.hpp>
#include <zmq_addon.hpp>

#include "tools/sim/encoder.h"

namespace kvidx::sim {

bool ParseEncoding(const std::string& s, Encoding* out) {
  static const std::pair<const char*, Encoding> kNames[] = {
      {"vllm-array", Encoding::kVllmArray}, {"vllm-map", Encoding::kVllmMap},
      {"vllm-bytes", Encoding::kVllmBytes}, {"vllm-0.9", Encoding::kVllmV090},
      {"sglang", Encoding::kSglang},        {"aibrix", Encoding::kAibrix},
      {"seqid", Encoding::kSeqId},          {"kvbm", Encoding::kKvbm}};
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
    case Encoding::kSeqId:
      return "seqid";
    case Encoding::kKvbm:
      return "kvbm";
  }
  return "?";
}

const char* DialectFor(Encoding e) {
  switch (e) {
    case Encoding::kSglang:
      return "sglang";
    case Encoding::kAibrix:
      return "aibrix";
    case Encoding::kSeqId:
      return "seqid";
    case Encoding::kKvbm:
      return "kvbm";
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
    b.position = static_cast<uint32_t>(out.size());
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
  instance_ = 1000 + options_.seed;
}

std::vector<uint64_t> SimEngine::Cached() const {
  if (options_.encoding != Encoding::kKvbm) return {lru_.begin(), lru_.end()};
  std::vector<uint64_t> out;
  for (uint64_t h : lru_) {
    auto it = lineage_.find(h);
    if (it != lineage_.end() && KvbmPublishes(it->second.second)) out.push_back(h);
  }
  return out;
}

std::optional<wire::LineageHash> SimEngine::Lineage(uint64_t engine_hash) const {
  auto it = lineage_.find(engine_hash);
  if (it == lineage_.end()) return std::nullopt;
  return wire::CanonicalLineageHash(engine_hash, it->second.first, it->second.second);
}

void SimEngine::Forget() {
  lru_.clear();
  cached_.clear();
  lineage_.clear();
  refs_.clear();
}

void SimEngine::Serve(const std::vector<SimBlock>& prompt) {
  ++batch_counter_;
  const Faults& f = options_.faults;
  if (f.restart_every != 0 && batch_counter_ % f.restart_every == 0 && seq_ > 0) {
    // The engine process restarts: empty cache, sequence from 0, empty replay buffer.
    ++restarts_;
    seq_ = 0;
    ring_.clear();
    Forget();
    next_sequence_ = 1;
    ++instance_;  // a new process: a new KVBM instance
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
    lineage_[b.engine_hash] = {b.parent_hash, b.position};
    p.stored.push_back(b);
  }
  if (options_.encoding == Encoding::kSeqId && !p.stored.empty()) {
    p.sequence_id = next_sequence_++;
    p.sequence = prompt;
    for (const SimBlock& b : prompt) refs_[b.engine_hash].push_back({p.sequence_id, b.position});
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
    if (auto r = refs_.find(victim); r != refs_.end()) {
      p.sequence_removed.insert(p.sequence_removed.end(), r->second.begin(), r->second.end());
      refs_.erase(r);
    }
  }
  if (p.stored.empty() && p.removed.empty()) return;
  Send(p);
}

void SimEngine::ClearAll() {
  ++batch_counter_;
  Forget();
  Pending p;
  p.cleared = true;
  Send(p);
}

std::vector<std::vector<uint8_t>> SimEngine::EncodeKvbmStep(const Pending& p) const {
  if (p.cleared) return {EncodeKvbm(false, true, {}, 0, instance_)};
  std::vector<wire::LineageHash> create, remove;
  for (const SimBlock& b : p.stored) {
    if (KvbmPublishes(b.position))
      create.push_back(*wire::CanonicalLineageHash(b.engine_hash, b.parent_hash, b.position));
  }
  for (uint64_t h : p.removed) {
    auto it = lineage_.find(h);  // kept until the step is encoded (erased after Send)
    if (it != lineage_.end() && KvbmPublishes(it->second.second))
      remove.push_back(*wire::CanonicalLineageHash(h, it->second.first, it->second.second));
  }
  // Creates by position ascending, removes descending (as KVBM sends them).
  auto by_pos = [](const wire::LineageHash& a, const wire::LineageHash& b) {
    return a.position < b.position;
  };
  std::sort(create.begin(), create.end(), by_pos);
  std::sort(remove.rbegin(), remove.rend(), by_pos);
  std::vector<std::vector<uint8_t>> out;
  if (!create.empty()) out.push_back(EncodeKvbm(true, false, create, 0, instance_));
  if (!remove.empty()) out.push_back(EncodeKvbm(false, false, remove, 0, instance_));
  return out;
}

std::vector<uint8_t> SimEngine::EncodeSeqIdStep(const Pending& p) const {
  std::vector<SeqIdEvent> events;
  if (p.cleared) return EncodeSeqIdBatch({}, /*cleared=*/true);
  if (!p.sequence.empty()) {
    SeqIdEvent e;
    e.sequence_id = p.sequence_id;
    for (const SimBlock& b : p.sequence) {
      e.block_numbers.push_back(b.position);
      e.block_tokens.push_back(b.tokens);
    }
    events.push_back(std::move(e));
  }
  std::map<int64_t, std::vector<uint32_t>> removed;  // by sequence
  for (const auto& [seq, number] : p.sequence_removed) removed[seq].push_back(number);
  for (auto& [seq, numbers] : removed) events.push_back(SeqIdEvent{seq, numbers, {}});
  return EncodeSeqIdBatch(events);
}

std::vector<std::vector<uint8_t>> SimEngine::Encode(const Pending& p) const {
  if (options_.encoding == Encoding::kKvbm) return EncodeKvbmStep(p);
  if (options_.encoding == Encoding::kSeqId) return {EncodeSeqIdStep(p)};
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
  return {EncodeBatch(options_.encoding, ts, options_.block_size, c)};
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
  for (std::vector<uint8_t>& payload : Encode(p)) {
    uint64_t seq = seq_++;
    uint8_t seq8[8];
    for (int i = 0; i < 8; ++i) seq8[i] = static_cast<uint8_t>(seq >> (56 - 8 * i));
    ring_.emplace_back(seq, payload);
    while (ring_.size() > options_.replay_buffer) ring_.pop_front();
    if (f.drop_every != 0 && batch_counter_ % f.drop_every == 0) continue;  // lost on the way
    pub_.send(zmq::buffer(options_.topic), zmq::send_flags::sndmore);
    pub_.send(zmq::buffer(seq8, 8), zmq::send_flags::sndmore);
    pub_.send(zmq::buffer(payload), zmq::send_flags::none);
  }
  for (uint64_t h : p.removed) lineage_.erase(h);
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
