// kvidx-sim's simulated engine: the publisher side of the engines' protocol, for real.
//
// One SimEngine is one engine process (one data-parallel rank): a PUB socket sending
// [topic, seq8, payload] and a ROUTER serving replays from a bounded ring of the batches it sent
// (wire.md §2), with the payloads encoded in any dialect kvidx accepts. Its cache is an LRU of
// blocks: serving a request stores the blocks it misses (BlockStored, chained by parent hash)
// and evicts the least recently used ones past capacity (BlockRemoved). It keeps its own record
// of what it holds, which the tests compare with kvidx's index.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "tools/sim/encoder.h"

namespace kvidx::sim {

struct Faults {
  uint32_t drop_every = 0;     // every Nth batch is not sent live (a gap; replay has it)
  uint32_t restart_every = 0;  // every Nth batch the engine "restarts": cache and seq reset
  uint32_t garbage_every = 0;  // every Nth batch is preceded by garbage frames
  uint32_t stall_every = 0;    // every Nth batch, stall for stall_ms
  uint32_t stall_ms = 0;
};

struct EngineOptions {
  std::string pod;
  uint32_t dp_rank = 0;
  std::string pub_endpoint;     // bound
  std::string replay_endpoint;  // bound; "" = no replay
  std::string topic;
  Encoding encoding = Encoding::kVllmMap;
  bool replay_with_topic = true;  // vLLM >= 0.26 layout
  uint32_t block_size = 16;
  size_t cache_blocks = 4096;
  size_t replay_buffer = 10000;  // batches
  Faults faults;
  uint64_t seed = 1;
};

// A block of a prompt: its engine hash (content-chained, as a fixed-seed vLLM computes it) and
// its tokens.
struct SimBlock {
  uint64_t engine_hash;
  uint64_t parent_hash;  // 0: first block
  std::vector<uint32_t> tokens;
  uint32_t position = 0;  // within the prompt (KVBM lineage, sequence-id block numbers)
};

class SimEngine {
 public:
  SimEngine(zmq::context_t& ctx, EngineOptions options);

  // Serves one request: stores its missing blocks, evicts past capacity, publishes one batch.
  void Serve(const std::vector<SimBlock>& prompt);
  // Answers pending replay requests (call often).
  void PollReplay();
  // Publishes an AllBlocksCleared (and empties the cache).
  void ClearAll();

  const EngineOptions& options() const { return options_; }
  // Engine hashes currently cached (the simulator's own record); for KVBM only the blocks it
  // publishes (positions 16, 32, ...).
  std::vector<uint64_t> Cached() const;
  // The lineage hash of a cached block (KVBM: what it publishes for it).
  std::optional<wire::LineageHash> Lineage(uint64_t engine_hash) const;
  uint64_t batches_sent() const { return seq_; }
  uint64_t restarts() const { return restarts_; }

 private:
  struct Pending {
    std::vector<SimBlock> stored;  // runs of blocks, each with its parent
    std::vector<uint64_t> removed;
    bool cleared = false;
    // The sequence-id form: the whole prompt, stored under a new sequence (a sequence's
    // block n is the child of its block n - 1, so it names every block), and the (sequence,
    // block number) references of the removed blocks.
    int64_t sequence_id = 0;
    std::vector<SimBlock> sequence;
    std::vector<std::pair<int64_t, uint32_t>> sequence_removed;
  };
  // The batches of one step: one, or for KVBM (one variant per message) a Create and a Remove.
  std::vector<std::vector<uint8_t>> Encode(const Pending& p) const;
  std::vector<std::vector<uint8_t>> EncodeKvbmStep(const Pending& p) const;
  std::vector<uint8_t> EncodeSeqIdStep(const Pending& p) const;
  void Forget();  // the cache and its bookkeeping emptied
  void Send(const Pending& p);
  void SendGarbage();

  EngineOptions options_;
  zmq::socket_t pub_;
  std::unique_ptr<zmq::socket_t> router_;
  uint64_t seq_ = 0;
  uint64_t batch_counter_ = 0;
  uint64_t restarts_ = 0;
  std::deque<std::pair<uint64_t, std::vector<uint8_t>>> ring_;
  std::list<uint64_t> lru_;  // most recent first
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> cached_;
  std::unordered_map<uint64_t, std::pair<uint64_t, uint32_t>> lineage_;  // parent, position
  // The sequence-id form: which (sequence, block number) references each cached block has.
  std::unordered_map<uint64_t, std::vector<std::pair<int64_t, uint32_t>>> refs_;
  int64_t next_sequence_ = 1;
  uint64_t instance_ = 0;  // KVBM instance id (low half); a restart takes a new one
  std::mt19937_64 rng_;
};

// Builds prompts: block b of a chain gets tokens derived from its id, and engine hashes chain
// like a fixed-seed vLLM's (content hashes, equal across pods).
std::vector<SimBlock> MakePrompt(const std::vector<uint64_t>& block_ids, uint32_t block_size);

}  // namespace kvidx::sim
