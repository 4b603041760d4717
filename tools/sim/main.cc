// kvidx-sim: a fleet of simulated inference engines publishing KV-cache events over ZeroMQ, as
// the real engines do (see tools/sim/engine.h), driven by a synthetic workload or a trace.
//
//   kvidx-sim --pods 4 [--dp 1] [--base-port 5557] [--host 127.0.0.1] [--encoding vllm-map]
//             [--workload synthetic|trace] [--trace FILE] [--requests N] [--rate R]
//             [--cache-blocks N] [--block-size 16] [--model NAME] [--topic T]
//             [--drop-every N] [--restart-every N] [--garbage-every N] [--stall-every N]
//             [--stall-ms MS] [--no-replay] [--replay-without-topic] [--linger-ms MS]
//             [--start-delay-ms MS] [--record FILE] [--config-out FILE] [--seed S]
//             [--mixed-encodings] [--prompts-out FILE] [--pod-prefix P]
//
// Encodings: vllm-array vllm-map vllm-bytes vllm-0.9 sglang aibrix seqid kvbm. KVBM engines
// publish no tokens: the written configuration puts them in a model "<model>-kvbm" keyed by
// engine hash, and their record names the blocks they publish (positions 16, 32, ...).
// --prompts-out FILE also writes FILE.kvbm: the last four prompts of 33 blocks or more a KVBM
// engine served, each a line of the lineage hashes a router would look up (u128, hex,
// comma-separated).
#include <signal.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>

#include "config/config.h"
#include "index/block_key.h"
#include "tools/sim/engine.h"

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

struct Args {
  uint32_t pods = 4;
  uint32_t dp = 1;
  uint32_t base_port = 5557;
  std::string host = "127.0.0.1";
  std::string encoding = "vllm-map";
  bool mixed_encodings = false;
  std::string workload = "synthetic";
  std::string trace;
  uint64_t requests = 2000;
  double rate = 0;
  size_t cache_blocks = 2048;
  uint32_t block_size = 16;
  std::string model = "demo-model";
  std::string topic = "kv-events";
  kvidx::sim::Faults faults;
  bool replay = true;
  bool replay_with_topic = true;
  uint32_t linger_ms = 2000;
  uint32_t start_delay_ms = 500;
  std::string record;
  std::string config_out;
  std::string prompts_out;
  std::string pod_prefix = "pod-";
  uint64_t seed = 1;
};

Args Parse(int argc, char** argv) {
  Args a;
  CLI::App app("kvidx-sim: simulated inference engines publishing KV-cache events over ZeroMQ");
  app.add_option("--pods", a.pods, "engines (pods)")->check(CLI::PositiveNumber);
  app.add_option("--dp", a.dp, "data-parallel ranks per pod")->check(CLI::PositiveNumber);
  app.add_option("--base-port", a.base_port, "first PUB port (0: the kernel picks every port)");
  app.add_option("--host", a.host, "address to bind");
  app.add_option("--encoding", a.encoding,
                 "vllm-array vllm-map vllm-bytes vllm-0.9 sglang aibrix seqid kvbm");
  app.add_flag("--mixed-encodings", a.mixed_encodings, "cycle the encodings over the pods");
  app.add_option("--workload", a.workload, "synthetic or trace")
      ->check(CLI::IsMember({"synthetic", "trace"}));
  app.add_option("--trace", a.trace, "a Mooncake-style JSONL trace");
  app.add_option("--requests", a.requests, "requests to serve");
  app.add_option("--rate", a.rate, "requests per second (0: as fast as possible)");
  app.add_option("--cache-blocks", a.cache_blocks, "each engine's cache, in blocks");
  app.add_option("--block-size", a.block_size, "tokens per block")->check(CLI::PositiveNumber);
  app.add_option("--model", a.model, "model name");
  app.add_option("--topic", a.topic, "ZeroMQ topic");
  app.add_option("--drop-every", a.faults.drop_every, "drop every Nth batch (a gap)");
  app.add_option("--restart-every", a.faults.restart_every, "restart the engine every N batches");
  app.add_option("--garbage-every", a.faults.garbage_every, "garbage frames every N batches");
  app.add_option("--stall-every", a.faults.stall_every, "stall every N batches");
  app.add_option("--stall-ms", a.faults.stall_ms, "how long a stall lasts");
  app.add_flag("!--no-replay", a.replay, "serve no replays");
  app.add_flag("!--replay-without-topic", a.replay_with_topic,
               "replay replies without the topic frame (vLLM < 0.26)");
  app.add_option("--linger-ms", a.linger_ms, "keep serving replays this long after the end");
  app.add_option("--start-delay-ms", a.start_delay_ms, "wait before the first batch");
  app.add_option("--record", a.record, "write what every engine holds at the end");
  app.add_option("--config-out", a.config_out, "write a kvidx configuration for this fleet");
  app.add_option("--prompts-out", a.prompts_out, "write the prompts served");
  app.add_option("--pod-prefix", a.pod_prefix, "pod name prefix");
  app.add_option("--seed", a.seed, "workload seed");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e) == 0 ? 0 : 2);
  }
  return a;
}

// Requests as chains of block ids.
class Workload {
 public:
  virtual ~Workload() = default;
  virtual bool Next(std::vector<uint64_t>* ids) = 0;
};

// Prefix groups (a shared system prompt / conversation) plus a unique tail per request.
class Synthetic : public Workload {
 public:
  explicit Synthetic(uint64_t seed) : rng_(seed) {
    for (int g = 0; g < 64; ++g) prefix_len_.push_back(4 + rng_() % 29);
  }
  bool Next(std::vector<uint64_t>* ids) override {
    ids->clear();
    // Zipf-like popularity: low group numbers are hot.
    uint32_t g = static_cast<uint32_t>(
        std::min<double>(63, std::floor(std::pow(rng_() % 4096 / 4096.0, 2.0) * 64)));
    for (uint32_t j = 0; j < prefix_len_[g]; ++j) ids->push_back(uint64_t{g} * 1000 + j);
    uint32_t tail = 1 + rng_() % 8;
    for (uint32_t j = 0; j < tail; ++j) ids->push_back(next_unique_++);
    return true;
  }

 private:
  std::mt19937_64 rng_;
  std::vector<uint32_t> prefix_len_;
  uint64_t next_unique_ = 1'000'000;
};

// The Mooncake conversation trace: each line's hash_ids are the request's blocks.
class Trace : public Workload {
 public:
  explicit Trace(const std::string& path) : in_(path) {
    if (!in_) {
      std::fprintf(stderr, "kvidx-sim: cannot read trace %s\n", path.c_str());
      std::exit(1);
    }
  }
  bool Next(std::vector<uint64_t>* ids) override {
    std::string line;
    while (std::getline(in_, line)) {
      ids->clear();
      auto at = line.find("\"hash_ids\"");
      if (at == std::string::npos) continue;
      at = line.find('[', at);
      auto end = line.find(']', at);
      if (at == std::string::npos || end == std::string::npos) continue;
      const char* p = line.c_str() + at + 1;
      const char* stop = line.c_str() + end;
      while (p < stop) {
        char* next = nullptr;
        unsigned long long v = std::strtoull(p, &next, 10);
        if (next == p) {
          ++p;
          continue;
        }
        ids->push_back(v);
        p = next;
      }
      if (!ids->empty()) return true;
    }
    return false;
  }

 private:
  std::ifstream in_;
};

}  // namespace

int main(int argc, char** argv) {
  Args a = Parse(argc, argv);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::vector<kvidx::sim::Encoding> encodings;
  {
    kvidx::sim::Encoding e;
    if (!kvidx::sim::ParseEncoding(a.encoding, &e)) {
      std::fprintf(stderr, "kvidx-sim: unknown encoding %s\n", a.encoding.c_str());
      return 2;
    }
    encodings.push_back(e);
    if (a.mixed_encodings) {
      for (auto x : {kvidx::sim::Encoding::kVllmArray, kvidx::sim::Encoding::kVllmBytes,
                     kvidx::sim::Encoding::kSglang, kvidx::sim::Encoding::kVllmV090,
                     kvidx::sim::Encoding::kAibrix, kvidx::sim::Encoding::kSeqId,
                     kvidx::sim::Encoding::kKvbm}) {
        if (x != e) encodings.push_back(x);
      }
    }
  }
  try {
    zmq::context_t ctx(1);
    std::vector<std::unique_ptr<kvidx::sim::SimEngine>> engines;
    kvidx::config::ModelConfig model;
    model.name = a.model;
    model.block_size = a.block_size;
    // KVBM engines publish no tokens: their blocks live in a namespace keyed by engine hash.
    kvidx::config::ModelConfig kvbm_model = model;
    kvbm_model.name = a.model + "-kvbm";
    kvbm_model.key_by_engine_hash = true;
    bool any_kvbm = false;
    std::vector<kvidx::config::PublisherConfig> fleet;
    for (uint32_t p = 0; p < a.pods; ++p) {
      for (uint32_t r = 0; r < a.dp; ++r) {
        uint32_t i = p * a.dp + r;
        kvidx::sim::EngineOptions o;
        o.pod = a.pod_prefix + std::to_string(p);
        o.dp_rank = r;
        // --base-port 0: every socket binds a free port (tests); the config names them.
        auto port = [&](uint32_t k) {
          return a.base_port == 0 ? std::string("*") : std::to_string(a.base_port + k);
        };
        o.pub_endpoint = "tcp://" + a.host + ":" + port(2 * i);
        if (a.replay) o.replay_endpoint = "tcp://" + a.host + ":" + port(2 * i + 1);
        o.topic = a.topic;
        o.encoding = encodings[i % encodings.size()];
        o.replay_with_topic = a.replay_with_topic;
        o.block_size = a.block_size;
        o.cache_blocks = a.cache_blocks;
        o.faults = a.faults;
        o.seed = a.seed * 1000 + i;
        engines.push_back(std::make_unique<kvidx::sim::SimEngine>(ctx, o));
        o.pub_endpoint = engines.back()->options().pub_endpoint;
        o.replay_endpoint = engines.back()->options().replay_endpoint;
        kvidx::config::PublisherConfig pc;
        pc.pod = o.pod;
        pc.dp_rank = r;
        const bool kvbm = o.encoding == kvidx::sim::Encoding::kKvbm;
        any_kvbm |= kvbm;
        pc.model = kvbm ? kvbm_model.name : a.model;
        pc.endpoint = o.pub_endpoint;
        pc.replay_endpoint = o.replay_endpoint;
        pc.topic = a.topic;
        pc.dialect = *kvidx::wire::ParseDialect(kvidx::sim::DialectFor(o.encoding));
        fleet.push_back(std::move(pc));
      }
    }
    if (!a.config_out.empty()) {  // whole or absent: readers wait for the name
      {
        std::ofstream out(a.config_out + ".tmp");
        out << "# Written by kvidx-sim for its simulated fleet.\n"
            << kvidx::config::FleetToml(
                   any_kvbm ? std::vector{model, kvbm_model} : std::vector{model}, fleet);
      }
      std::rename((a.config_out + ".tmp").c_str(), a.config_out.c_str());
    }
    std::fprintf(stderr, "kvidx-sim: %zu engines on %s:%u.., %s, workload %s\n", engines.size(),
                 a.host.c_str(), a.base_port,
                 a.mixed_encodings ? "mixed encodings" : a.encoding.c_str(), a.workload.c_str());
    std::unique_ptr<Workload> wl;
    if (a.workload == "trace")
      wl = std::make_unique<Trace>(a.trace);
    else
      wl = std::make_unique<Synthetic>(a.seed);

    // Block id -> kvidx block key, for the record (what a router would compute).
    const uint64_t root = kvidx::index::NamespaceRoot(a.model, "");
    const uint64_t kvbm_root = kvidx::index::NamespaceRoot(kvbm_model.name, "");
    std::unordered_map<uint64_t, uint64_t> key_of;  // engine hash -> kvidx key

    auto poll_all = [&] {
      for (auto& e : engines) e->PollReplay();
    };
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(a.start_delay_ms);
    while (std::chrono::steady_clock::now() < until && !g_stop) {
      poll_all();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::mt19937_64 rng(a.seed);
    std::vector<uint64_t> ids;
    auto start = std::chrono::steady_clock::now();
    uint64_t served = 0;
    std::map<uint64_t, std::vector<uint32_t>> sample_prompts;  // first block id -> tokens
    std::vector<std::string> kvbm_samples;  // prompts KVBM engines served, as lineage hashes
    while (served < a.requests && !g_stop && wl->Next(&ids)) {
      auto prompt = kvidx::sim::MakePrompt(ids, a.block_size);
      uint64_t key = root;
      for (const auto& b : prompt) {
        key = kvidx::index::ChainBlockKey(key, b.tokens);
        key_of[b.engine_hash] = key;
      }
      if (!a.prompts_out.empty() && sample_prompts.size() < 4 && !sample_prompts.count(ids[0])) {
        std::vector<uint32_t> all;
        for (const auto& b : prompt) all.insert(all.end(), b.tokens.begin(), b.tokens.end());
        sample_prompts[ids[0]] = all;
        {
          std::ofstream out(a.prompts_out + ".tmp");
          for (auto& [first, tokens] : sample_prompts) {
            for (size_t i = 0; i < tokens.size(); ++i) out << (i ? "," : "") << tokens[i];
            out << "\n";
          }
        }
        std::rename((a.prompts_out + ".tmp").c_str(), a.prompts_out.c_str());
      }
      // Prefix affinity: most requests of a prefix go to its home engine.
      uint64_t home = XXH3_64bits(&ids[0], sizeof(uint64_t)) % engines.size();
      size_t target = rng() % 10 < 7 ? home : rng() % engines.size();
      engines[target]->Serve(prompt);
      if (!a.prompts_out.empty() && prompt.size() > 32 &&
          engines[target]->options().encoding == kvidx::sim::Encoding::kKvbm) {
        // A prompt a KVBM engine served, as the lineage hashes a router would send (u128 hex).
        std::string line;
        for (const auto& b : prompt) {
          if (!kvidx::sim::KvbmPublishes(b.position)) continue;
          auto h = kvidx::wire::PackLineageHash(
              *kvidx::wire::CanonicalLineageHash(b.engine_hash, b.parent_hash, b.position));
          char buf[40];
          std::snprintf(buf, sizeof(buf), "%016lx%016lx", static_cast<unsigned long>(h->first),
                        static_cast<unsigned long>(h->second));
          line += (line.empty() ? "" : ",") + std::string(buf);
        }
        kvbm_samples.push_back(line);  // the last four
        if (kvbm_samples.size() > 4) kvbm_samples.erase(kvbm_samples.begin());
        std::ofstream out(a.prompts_out + ".kvbm.tmp");
        for (const auto& l : kvbm_samples) out << l << "\n";
        out.close();
        std::rename((a.prompts_out + ".kvbm.tmp").c_str(), (a.prompts_out + ".kvbm").c_str());
      }
      ++served;
      poll_all();
      if (a.rate > 0) {
        auto due = start + std::chrono::duration<double>(served / a.rate);
        while (std::chrono::steady_clock::now() < due && !g_stop) {
          poll_all();
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
      }
    }
    uint64_t batches = 0;
    for (auto& e : engines) batches += e->batches_sent();
    std::fprintf(
        stderr, "kvidx-sim: served %lu requests, %lu batches; lingering %u ms for replays\n",
        static_cast<unsigned long>(served), static_cast<unsigned long>(batches), a.linger_ms);
    if (!a.record.empty()) {
      std::ofstream out(a.record + ".tmp");
      for (auto& e : engines) {
        const bool kvbm = e->options().encoding == kvidx::sim::Encoding::kKvbm;
        for (uint64_t h : e->Cached()) {
          uint64_t key = key_of[h];
          if (auto lineage = e->Lineage(h); kvbm && lineage) {
            key = kvidx::index::EngineHashKey(kvbm_root, kvidx::wire::LineageEngineHash(*lineage));
          }
          char buf[32];
          std::snprintf(buf, sizeof(buf), "%016lx", static_cast<unsigned long>(key));
          out << e->options().pod << ' ' << e->options().dp_rank << ' ' << buf << '\n';
        }
      }
      out.close();
      std::rename((a.record + ".tmp").c_str(), a.record.c_str());
    }
    until = std::chrono::steady_clock::now() + std::chrono::milliseconds(a.linger_ms);
    while (std::chrono::steady_clock::now() < until && !g_stop) {
      poll_all();
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvidx-sim: %s\n", e.what());
    return 1;
  }
}
