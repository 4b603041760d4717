// The Mooncake conversation trace (../shared/traces/, FAST'25) as a bench workload.
//
// Each trace request is a chain of block ids of 512 tokens; a shared id means a shared prefix.
// Every id is split into 512 / block_tokens engine blocks, numbered id * split + sub, each with
// token ids derived from its number and an engine hash derived from it too (the id names the
// whole prefix, so these are consistent wherever the id appears).
//
// The workload replays the requests in trace order through a router and a fleet of pods:
// - the router looks the prompt up (the lookup every side of the bench times and answers), and
//   sends it to the pod with the best score: leading blocks cached there, minus a load penalty
//   (requests it got among the last 32, times the prompt's blocks / 8) so one hot prefix does
//   not pin the whole trace to one pod;
// - each pod keeps an LRU of `capacity` blocks. Serving a prompt touches the blocks it holds,
//   evicts least-recently-used blocks to make room (one remove event each) and stores the rest
//   (store events of consecutive blocks within one id, each naming its parent). Blocks are made
//   most recent tail first, so a prompt's tail is evicted before its head, as vLLM frees.
//
// The pods' LRUs are the ground truth: a lookup's exact answer is, per pod, how many leading
// blocks of the prompt it holds. The workload records that answer for every request, so each
// side's answers are checked against the model, not only against each other.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <list>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvidx::bench {

inline constexpr uint32_t kTraceTokensPerId = 512;

struct TraceRequest {
  int64_t timestamp_ms = 0;
  std::vector<uint32_t> ids;
};

// Reads up to `limit` requests (0: all). Throws std::runtime_error on a malformed line.
inline std::vector<TraceRequest> ReadTrace(const std::string& path, size_t limit) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<TraceRequest> out;
  std::string line;
  while ((limit == 0 || out.size() < limit) && std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line);
    TraceRequest r;
    r.timestamp_ms = j.at("timestamp").get<int64_t>();
    r.ids = j.at("hash_ids").get<std::vector<uint32_t>>();
    out.push_back(std::move(r));
  }
  return out;
}

struct TraceOp {
  enum Kind : uint8_t { kStore, kRemove } kind;
  uint16_t pod;
  uint32_t first;  // block number (remove: the block)
  uint32_t count;  // blocks, consecutive numbers (remove: 1)
  int64_t parent;  // block number before `first`, -1 for none (store only)
};

struct TraceStep {
  uint32_t request;
  uint16_t pod;                                      // where the router sent it
  std::vector<std::pair<uint16_t, uint32_t>> truth;  // (pod, leading blocks), sorted by pod
  uint32_t ops_begin, ops_end;                       // its events in TraceWorkload::ops
};

struct TraceWorkload {
  uint32_t split = 32;  // engine blocks per trace id
  uint32_t block_tokens = 16;
  uint32_t pods = 16;
  uint32_t capacity = 0;  // blocks per pod
  std::vector<TraceRequest> requests;
  std::vector<TraceStep> steps;
  std::vector<TraceOp> ops;
  uint32_t blocks = 0;                             // block numbers in use: (max id + 1) * split
  uint64_t prompt_blocks = 0, matched_blocks = 0;  // over every request, at the chosen pod
  uint64_t stores = 0, removes = 0;                // block events
  uint64_t peak_pairs = 0, peak_distinct = 0, final_pairs = 0;
  double round_robin_hit = 0;  // hit ratio of the same pods routed round-robin

  uint32_t Block(const TraceRequest& r, size_t pos) const {
    return r.ids[pos / split] * split + static_cast<uint32_t>(pos % split);
  }
  size_t Blocks(const TraceRequest& r) const { return r.ids.size() * split; }
  uint64_t EngineHash(uint32_t block) const { return 0x9E3779B97F4A7C15ULL * (block + 1); }
  // Token j of a block: a mixed counter, so no two blocks share content by accident.
  uint32_t Token(uint32_t block, uint32_t j) const {
    uint64_t x = uint64_t{block} * block_tokens + j + 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return static_cast<uint32_t>((x ^ (x >> 31)) % 151000);
  }
};

namespace trace_detail {

// One pod's cache: an LRU of block numbers, most recent first.
class PodCache {
 public:
  explicit PodCache(uint32_t capacity) : capacity_(capacity) {}
  bool Holds(uint32_t b) const { return where_.count(b) != 0; }
  size_t size() const { return where_.size(); }
  // Makes b the most recent; returns false if it was not held (and inserts it).
  bool Touch(uint32_t b) {
    auto it = where_.find(b);
    if (it != where_.end()) {
      order_.splice(order_.begin(), order_, it->second);
      return true;
    }
    order_.push_front(b);
    where_[b] = order_.begin();
    return false;
  }
  bool full(size_t adding) const { return where_.size() + adding > capacity_; }
  uint32_t EvictOldest() {
    uint32_t b = order_.back();
    order_.pop_back();
    where_.erase(b);
    return b;
  }

 private:
  uint32_t capacity_;
  std::list<uint32_t> order_;
  std::unordered_map<uint32_t, std::list<uint32_t>::iterator> where_;
};

// Leading blocks of `r` each pod holds, from the holder masks (bit p: pod p holds the block).
inline std::vector<uint32_t> Leading(const TraceWorkload& w, const TraceRequest& r,
                                     const std::vector<uint64_t>& mask) {
  std::vector<uint32_t> lead(w.pods, 0);
  uint64_t alive = ~uint64_t{0};
  const size_t n = w.Blocks(r);
  for (size_t i = 0; i < n && alive != 0; ++i) {
    alive &= mask[w.Block(r, i)];
    for (uint64_t a = alive; a != 0; a &= a - 1) ++lead[__builtin_ctzll(a)];
  }
  return lead;
}

// Serves request `r` at `pod`: appends its events to `ops` (when non-null) and updates the
// cache and the holder masks. Returns the blocks it found cached (the leading run).
struct PodFleet {
  std::vector<PodCache> caches;
  std::vector<uint64_t> mask;  // per block number: bit p set when pod p holds it
  std::vector<uint32_t> refs;  // per block number: pods holding it
  uint64_t distinct = 0, stores = 0, removes = 0;
  PodFleet(uint32_t pods, uint32_t capacity, uint32_t blocks)
      : caches(pods, PodCache(capacity)), mask(blocks, 0), refs(blocks, 0) {}
  uint64_t pairs() const {
    uint64_t n = 0;
    for (const auto& c : caches) n += c.size();
    return n;
  }
};

inline uint32_t Serve(const TraceWorkload& w, const TraceRequest& r, uint16_t pod, PodFleet& f,
                      std::vector<TraceOp>* ops) {
  auto& mask = f.mask;
  auto& refs = f.refs;
  uint64_t& distinct = f.distinct;
  PodCache& c = f.caches[pod];
  const size_t n = w.Blocks(r);
  std::vector<bool> fresh(n);
  size_t adding = 0;
  uint32_t lead = 0;
  bool leading = true;
  for (size_t i = 0; i < n; ++i) {
    fresh[i] = !c.Holds(w.Block(r, i));
    adding += fresh[i];
    leading = leading && !fresh[i];
    lead += leading;
  }
  // Touch what is held first, so eviction cannot take a block this prompt uses.
  for (size_t i = n; i-- > 0;) {
    if (!fresh[i]) c.Touch(w.Block(r, i));
  }
  while (c.full(adding)) {
    uint32_t b = c.EvictOldest();
    mask[b] &= ~(uint64_t{1} << pod);
    if (--refs[b] == 0) --distinct;
    if (ops != nullptr) ops->push_back({TraceOp::kRemove, pod, b, 1, -1});
    ++f.removes;
  }
  for (size_t i = n; i-- > 0;) {
    const uint32_t b = w.Block(r, i);
    c.Touch(b);
    if (!fresh[i]) continue;
    mask[b] |= uint64_t{1} << pod;
    if (refs[b]++ == 0) ++distinct;
  }
  // Store events: runs of fresh blocks, cut at id boundaries (consecutive block numbers).
  for (size_t i = 0; i < n;) {
    if (!fresh[i]) {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < n && fresh[j] && j % w.split != 0) ++j;
    if (ops != nullptr) {
      const int64_t parent = i == 0 ? -1 : int64_t{w.Block(r, i - 1)};
      ops->push_back({TraceOp::kStore, pod, w.Block(r, i), static_cast<uint32_t>(j - i), parent});
    }
    f.stores += j - i;
    i = j;
  }
  return lead;
}

}  // namespace trace_detail

// Builds the workload from `requests`: block_tokens must divide 512; pods at most 64.
inline TraceWorkload MakeTraceWorkload(std::vector<TraceRequest> requests, uint32_t pods,
                                       uint32_t capacity, uint32_t block_tokens) {
  using namespace trace_detail;
  if (pods == 0 || pods > 64) throw std::invalid_argument("pods must be 1..64");
  if (block_tokens == 0 || kTraceTokensPerId % block_tokens != 0)
    throw std::invalid_argument("block tokens must divide 512");
  TraceWorkload w;
  w.split = kTraceTokensPerId / block_tokens;
  w.block_tokens = block_tokens;
  w.pods = pods;
  w.capacity = capacity;
  w.requests = std::move(requests);
  uint32_t max_id = 0;
  for (const auto& r : w.requests) {
    for (uint32_t id : r.ids) max_id = std::max(max_id, id);
    if (w.Blocks(r) > capacity) {
      throw std::invalid_argument("a prompt of " + std::to_string(w.Blocks(r)) +
                                  " blocks does not fit a pod of " + std::to_string(capacity));
    }
  }
  w.blocks = (max_id + 1) * w.split;

  PodFleet fleet(pods, capacity, w.blocks);
  std::vector<uint16_t> recent(32, 0xFFFF);  // the pods of the last 32 requests
  std::vector<uint32_t> load(pods, 0);
  uint64_t pairs = 0;
  for (uint32_t ri = 0; ri < w.requests.size(); ++ri) {
    const TraceRequest& r = w.requests[ri];
    std::vector<uint32_t> lead = Leading(w, r, fleet.mask);
    TraceStep s{ri, 0, {}, static_cast<uint32_t>(w.ops.size()), 0};
    const double penalty = static_cast<double>(w.Blocks(r)) / 8;
    double best = -1e300;
    for (uint16_t p = 0; p < pods; ++p) {
      if (lead[p] != 0) s.truth.emplace_back(p, lead[p]);
      const double score = lead[p] - penalty * load[p];
      if (score > best) best = score, s.pod = p;
    }
    const uint32_t hit = Serve(w, r, s.pod, fleet, &w.ops);
    if (hit != lead[s.pod]) throw std::logic_error("trace model: lead and hit disagree");
    s.ops_end = static_cast<uint32_t>(w.ops.size());
    w.prompt_blocks += w.Blocks(r);
    w.matched_blocks += hit;
    uint16_t& slot = recent[ri % recent.size()];
    if (slot != 0xFFFF) --load[slot];
    slot = s.pod;
    ++load[s.pod];
    pairs = fleet.pairs();
    w.peak_pairs = std::max(w.peak_pairs, pairs);
    w.peak_distinct = std::max(w.peak_distinct, fleet.distinct);
    w.steps.push_back(std::move(s));
  }
  w.final_pairs = pairs;
  w.stores = fleet.stores;
  w.removes = fleet.removes;

  // The same pods routed round-robin, for the hit ratio prefix-aware routing buys.
  PodFleet rr(pods, capacity, w.blocks);
  uint64_t rr_hit = 0;
  for (uint32_t ri = 0; ri < w.requests.size(); ++ri) {
    rr_hit += Serve(w, w.requests[ri], static_cast<uint16_t>(ri % pods), rr, nullptr);
  }
  w.round_robin_hit =
      w.prompt_blocks ? static_cast<double>(rr_hit) / static_cast<double>(w.prompt_blocks) : 0;
  return w;
}

}  // namespace kvidx::bench
