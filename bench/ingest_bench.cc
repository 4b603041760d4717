// ingest_bench: the ingest path in figures.
//  A. decode + apply in one process, one thread, on the fleet workload (DESIGN.md §7), beside
//     decode alone;
//  B. end to end over ZeroMQ/TCP on loopback: in-process publishers (PUB + ROUTER replay) ->
//     1 and 2 kvidx-ingest worker processes -> the shared-memory index;
//  C. event to visible: batches published at a steady rate, the time until a lookup sees them.
// Each beside its baseline in the same run: the unordered_map + mutex index (bench/baseline.h)
// fed by kvidx's decoder, in process (A) and from one subscriber thread of this process on the
// same ZeroMQ streams (B, C).
//
//   ingest_bench [--blocks N] [--e2e-blocks N] [--publishers N] [--rate BLOCKS_PER_S]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <msgpack.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "bench/baseline.h"
#include "bench/fleet.h"
#include "control/control_area.h"
#include "index/block_key.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "ingest/applier.h"
#include "ingest/decoder.h"
#include "shared/clock.h"
#include "tools/sim/encoder.h"

namespace kvidx::bench {
namespace {

struct Args {
  uint32_t blocks = 200'000;
  uint32_t e2e_blocks = 800'000;
  uint32_t publishers = 8;
  uint32_t rate = 100'000;
};

// One vLLM map-era BlockStored batch (the simulator's encoder). Engine hashes are never 0, so
// 0 means "no parent".
std::vector<uint8_t> EncodeStore(uint64_t parent, const uint64_t* hashes, const uint32_t* tokens,
                                 uint32_t n, uint32_t bs, bool has_parent) {
  sim::BatchContent c;
  c.runs.push_back(sim::StoredRun{
      {hashes, hashes + n}, has_parent ? parent : 0, {tokens, tokens + size_t{n} * bs}});
  return sim::EncodeBatch(sim::Encoding::kVllmMap, 1.0, bs, c);
}

// The baseline's apply: a decoded batch into the map.
uint64_t ApplyToMap(Baseline& map, uint16_t pod, const ingest::EventBatch& batch) {
  uint64_t blocks = 0;
  for (const auto& e : batch.events) {
    if (e.kind == ingest::EventKind::kStored) {
      map.Store(pod, e.parent, e.hashes.data(), e.tokens.data(),
                static_cast<uint32_t>(e.hashes.size()));
    } else if (e.kind == ingest::EventKind::kRemoved) {
      for (uint64_t h : e.hashes) map.Remove(pod, h);
    }
    blocks += e.hashes.size();
  }
  return blocks;
}

// ---- A ----------------------------------------------------------------------------------
void InProcess(const Args& args) {
  Fleet f = MakeFleet(args.blocks, 7);
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<uint16_t> pods;
  uint64_t blocks = 0;
  std::vector<uint64_t> h(8);
  for (const auto& b : f.batches) {
    for (uint32_t i = 0; i < b.count; ++i) h[i] = f.EngineHash(b.first + i);
    payloads.push_back(EncodeStore(b.parent >= 0 ? f.EngineHash(b.parent) : 0, h.data(),
                                   f.Tokens(b.first), b.count, kTokensPerBlock, b.parent >= 0));
    pods.push_back(b.pod);
    blocks += b.count;
  }
  std::string name = "kvidx-ingest-bench-" + std::to_string(getpid());
  index::Segment::Remove(name);
  index::Geometry g = GeometryFor(f.blocks, f.pairs);
  auto seg = index::Segment::Create(name, g);
  index::PrefixIndex idx(seg->get());
  auto ns = *idx.RegisterNamespace({.model = "fleet", .block_size = kTokensPerBlock});
  std::vector<index::PublisherId> pub(kFleetPods);
  for (uint32_t p = 0; p < kFleetPods; ++p) {
    pub[p] = *idx.RegisterPublisher({.pod = "pod-" + std::to_string(p), .ns = ns});
  }
  ingest::Applier applier(&idx, {});
  ingest::EventBatch batch;
  ingest::DecodeReason reason;
  int64_t t0 = MonotonicNanos();
  for (const auto& p : payloads)
    (void)ingest::DecodeBatch(p, ingest::Dialect::kVllm, &batch, &reason);
  double decode_s = (MonotonicNanos() - t0) / 1e9;
  t0 = MonotonicNanos();
  for (size_t i = 0; i < payloads.size(); ++i) {
    (void)ingest::DecodeBatch(payloads[i], ingest::Dialect::kVllm, &batch, &reason);
    (void)applier.Apply(pub[pods[i]], batch);
  }
  double both_s = (MonotonicNanos() - t0) / 1e9;
  Baseline map(index::NamespaceRoot("fleet", ""), kTokensPerBlock, kFleetPods);
  t0 = MonotonicNanos();
  for (size_t i = 0; i < payloads.size(); ++i) {
    (void)ingest::DecodeBatch(payloads[i], ingest::Dialect::kVllm, &batch, &reason);
    ApplyToMap(map, pods[i], batch);
  }
  double map_s = (MonotonicNanos() - t0) / 1e9;
  std::printf(
      "A. in process, 1 thread, fleet workload (%u blocks, %zu batches of <= 8, %lu block "
      "stores):\n",
      f.blocks, payloads.size(), static_cast<unsigned long>(blocks));
  std::printf("   %-40s %8.2f M blocks/s\n", "decode only (msgpack -> events)",
              blocks / decode_s / 1e6);
  std::printf("   %-40s %8.2f M blocks/s   goal >= 6 M/s\n", "decode + apply (events -> index)",
              blocks / both_s / 1e6);
  std::printf("   %-40s %8.2f M blocks/s   kvidx / map %.2fx\n",
              "baseline: decode + apply (-> map)", blocks / map_s / 1e6, map_s / both_s);
  index::Segment::Remove(name);
}

// ---- B and C ----------------------------------------------------------------------------
// In-process engines: one thread publishes on every PUB and serves every ROUTER.
class Publishers {
 public:
  // Binds OS-chosen ports; endpoints() says which.
  Publishers(zmq::context_t& ctx, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
      auto pub = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::pub);
      pub->set(zmq::sockopt::sndhwm, 0);
      pub->set(zmq::sockopt::linger, 0);
      pub->bind("tcp://127.0.0.1:*");
      auto router = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::router);
      router->set(zmq::sockopt::sndhwm, 0);
      router->set(zmq::sockopt::linger, 0);
      router->bind("tcp://127.0.0.1:*");
      endpoints.emplace_back(pub->get(zmq::sockopt::last_endpoint),
                             router->get(zmq::sockopt::last_endpoint));
      pubs_.push_back(std::move(pub));
      routers_.push_back(std::move(router));
      history_.emplace_back();
    }
  }
  void Send(uint32_t i, std::vector<uint8_t> payload) {
    uint64_t seq = history_[i].size();
    uint8_t s8[8];
    for (int k = 0; k < 8; ++k) s8[k] = static_cast<uint8_t>(seq >> (56 - 8 * k));
    pubs_[i]->send(zmq::str_buffer(""), zmq::send_flags::sndmore);
    pubs_[i]->send(zmq::buffer(s8, 8), zmq::send_flags::sndmore);
    pubs_[i]->send(zmq::buffer(payload));
    history_[i].push_back(std::move(payload));
  }
  // A one-frame message outside the stream (the baseline's subscriber waits for one).
  void Probe(uint32_t i) { pubs_[i]->send(zmq::str_buffer("probe"), zmq::send_flags::dontwait); }
  void Serve() {
    for (size_t i = 0; i < routers_.size(); ++i) {
      std::vector<zmq::message_t> req;
      while (
          zmq::recv_multipart(*routers_[i], std::back_inserter(req), zmq::recv_flags::dontwait)) {
        uint64_t start = 0;
        for (size_t k = 0; k < req[2].size(); ++k) start = (start << 8) | req[2].data<uint8_t>()[k];
        auto reply = [&](uint64_t seq, const std::vector<uint8_t>& p) {
          uint8_t s8[8];
          for (int k = 0; k < 8; ++k) s8[k] = static_cast<uint8_t>(seq >> (56 - 8 * k));
          routers_[i]->send(zmq::buffer(req[0].data(), req[0].size()), zmq::send_flags::sndmore);
          routers_[i]->send(zmq::message_t(), zmq::send_flags::sndmore);
          routers_[i]->send(zmq::buffer(s8, 8), zmq::send_flags::sndmore);
          routers_[i]->send(zmq::buffer(p));
        };
        for (uint64_t s = start; s < history_[i].size(); ++s) reply(s, history_[i][s]);
        reply(~uint64_t{0}, {});
        req.clear();
      }
    }
  }
  size_t size() const { return pubs_.size(); }
  std::vector<std::pair<std::string, std::string>> endpoints;

 private:
  std::vector<std::unique_ptr<zmq::socket_t>> pubs_;
  std::vector<std::unique_ptr<zmq::socket_t>> routers_;
  std::vector<std::vector<std::vector<uint8_t>>> history_;
};

// The baseline ingest: one thread of this process subscribes to every publisher's PUB (no
// replay), decodes each batch with kvidx's decoder and applies it to the unordered_map baseline.
class MapSubscriber {
 public:
  explicit MapSubscriber(const Publishers& pubs)
      : n_(static_cast<uint32_t>(pubs.size())),
        map_(index::NamespaceRoot("bench", ""), 16, n_),
        applied_(std::make_unique<std::atomic<uint64_t>[]>(n_)),
        ready_(std::make_unique<std::atomic<bool>[]>(n_)) {
    thread_ = std::thread([this, eps = pubs.endpoints] { Run(eps); });
  }
  ~MapSubscriber() {
    stop_ = true;
    thread_.join();
  }
  MapSubscriber(const MapSubscriber&) = delete;
  MapSubscriber& operator=(const MapSubscriber&) = delete;

  // Probes every publisher until its subscription has delivered one (ZeroMQ drops what a PUB
  // sends before the subscription arrives). False if that takes more than 10 s.
  bool WaitSubscribed(Publishers& pubs) {
    int64_t deadline = MonotonicNanos() + 10'000'000'000;
    while (MonotonicNanos() < deadline) {
      uint32_t ready = 0;
      for (uint32_t i = 0; i < n_; ++i) {
        if (ready_[i].load()) {
          ++ready;
        } else {
          pubs.Probe(i);
        }
      }
      if (ready == n_) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }
  uint64_t blocks() const { return blocks_.load(); }
  uint64_t batches(uint32_t p) const { return applied_[p].load(); }

 private:
  void Run(std::vector<std::pair<std::string, std::string>> endpoints) {
    zmq::context_t ctx(1);
    std::vector<zmq::socket_t> subs;
    std::vector<zmq::pollitem_t> items;
    for (const auto& ep : endpoints) {
      subs.emplace_back(ctx, zmq::socket_type::sub);
      subs.back().set(zmq::sockopt::rcvhwm, 0);
      subs.back().set(zmq::sockopt::linger, 0);
      subs.back().set(zmq::sockopt::subscribe, "");
      subs.back().connect(ep.first);
    }
    for (auto& s : subs) items.push_back({s.handle(), 0, ZMQ_POLLIN, 0});
    ingest::EventBatch batch;
    ingest::DecodeReason reason;
    std::vector<zmq::message_t> parts;
    while (!stop_.load()) {
      zmq::poll(items, std::chrono::milliseconds(10));
      for (uint32_t i = 0; i < n_; ++i) {
        parts.clear();
        while (zmq::recv_multipart(subs[i], std::back_inserter(parts), zmq::recv_flags::dontwait)) {
          if (parts.size() == 3) {
            std::span<const uint8_t> payload(parts[2].data<uint8_t>(), parts[2].size());
            if (ingest::DecodeBatch(payload, ingest::Dialect::kVllm, &batch, &reason).ok()) {
              blocks_.fetch_add(ApplyToMap(map_, static_cast<uint16_t>(i), batch));
            }
            applied_[i].fetch_add(1);
          } else {
            ready_[i].store(true);
          }
          parts.clear();
        }
      }
    }
  }

  uint32_t n_;
  Baseline map_;
  std::unique_ptr<std::atomic<uint64_t>[]> applied_;
  std::unique_ptr<std::atomic<bool>[]> ready_;
  std::atomic<uint64_t> blocks_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string p(buf, n > 0 ? n : 0);
  return p.substr(0, p.rfind('/'));
}

struct Cluster {
  std::string segment;
  std::string config;
  std::vector<pid_t> workers;
};

Cluster StartWorkers(uint32_t workers, const Publishers& pubs, uint64_t blocks) {
  const uint32_t publishers = static_cast<uint32_t>(pubs.size());
  Cluster c;
  c.segment = "kvidx-ingest-e2e-" + std::to_string(getpid()) + "-" + std::to_string(workers);
  c.config = "/tmp/" + c.segment + ".toml";
  index::Segment::Remove(c.segment);
  control::ControlArea::Remove(control::ControlName(c.segment));
  std::ofstream cfg(c.config);
  cfg << "[segment]\nname = \"" << c.segment << "\"\nblocks = " << blocks * 11 / 10
      << "\npairs = " << blocks * 11 / 10 << "\npublishers = 64\nnamespaces = 4\nstripes = "
      << NextPow2(std::max<uint64_t>(64, blocks / 2048)) << "\n[ingest]\nworkers = " << workers
      << "\nidle_probe_ms = 0\n[[model]]\nname = \"bench\"\nblock_size = 16\n";
  for (uint32_t i = 0; i < publishers; ++i) {
    cfg << "[[publisher]]\npod = \"pod-" << i << "\"\nmodel = \"bench\"\nendpoint = \""
        << pubs.endpoints[i].first << "\"\nreplay_endpoint = \"" << pubs.endpoints[i].second
        << "\"\ndialect = \"vllm\"\n";
  }
  cfg.close();
  std::string exe = SelfDir() + "/../ingest/kvidx-ingest";
  for (uint32_t w = 0; w < workers; ++w) {
    pid_t pid = fork();
    if (pid == 0) {
      setenv("KVIDX_LOG_LEVEL", "error", 1);
      std::string ws = std::to_string(w);
      execl(exe.c_str(), exe.c_str(), "--config", c.config.c_str(), "--worker", ws.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    c.workers.push_back(pid);
  }
  return c;
}

void StopWorkers(Cluster& c) {
  for (pid_t p : c.workers) kill(p, SIGTERM);
  for (pid_t p : c.workers) waitpid(p, nullptr, 0);
  index::Segment::Remove(c.segment);
  control::ControlArea::Remove(control::ControlName(c.segment));
  unlink(c.config.c_str());
}

// Batches for publisher p: runs of 64 blocks, 8 per batch, tokens unique to (p, run).
std::vector<std::vector<uint8_t>> MakeStream(uint32_t p, uint64_t blocks,
                                             std::vector<uint64_t>* last_keys = nullptr) {
  std::vector<std::vector<uint8_t>> out;
  std::vector<uint32_t> tokens(8 * 16);
  std::vector<uint64_t> hashes(8);
  uint64_t root = index::NamespaceRoot("bench", "");
  uint64_t key = root;
  for (uint64_t b = 0; b < blocks; b += 8) {
    bool first = b % 64 == 0;
    if (first) key = root;
    for (uint32_t i = 0; i < 8; ++i) {
      uint64_t id = (uint64_t{p} << 40) | (b + i);
      hashes[i] = id * 0x9E3779B97F4A7C15ULL + 1;
      for (uint32_t k = 0; k < 16; ++k)
        tokens[i * 16 + k] = static_cast<uint32_t>((id * 131 + k) % 150000);
      key = index::ChainBlockKey(key, {&tokens[i * 16], 16});
    }
    if (last_keys) last_keys->push_back(key);
    uint64_t parent = b == 0 ? 0 : ((uint64_t{p} << 40) | (b - 1)) * 0x9E3779B97F4A7C15ULL + 1;
    out.push_back(EncodeStore(parent, hashes.data(), tokens.data(), 8, 16, !first));
  }
  return out;
}

uint64_t AppliedOps(index::PrefixIndex& idx) {
  uint64_t n = 0;
  for (auto p : idx.ActivePublishers()) n += index::Ld(idx.publisher_slot(p)->index.applied_ops);
  return n;
}

double EndToEnd(const Args& args, uint32_t workers) {
  zmq::context_t ctx(1);
  Publishers pubs(ctx, args.publishers);
  uint64_t per_pub = args.e2e_blocks / args.publishers / 64 * 64;
  std::vector<std::vector<std::vector<uint8_t>>> streams;
  for (uint32_t p = 0; p < args.publishers; ++p) streams.push_back(MakeStream(p, per_pub));
  Cluster c = StartWorkers(workers, pubs, per_pub * args.publishers);
  std::unique_ptr<index::Segment> seg;
  for (int i = 0; i < 500 && !seg; ++i) {
    auto s = index::Segment::Attach(c.segment, index::Segment::Access::kReadOnly);
    if (s.ok())
      seg = std::move(*s);
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!seg) {
    StopWorkers(c);
    return 0;
  }
  index::PrefixIndex idx(seg.get());
  // Let every link connect and finish its first-contact replay.
  int64_t until = MonotonicNanos() + 1'500'000'000;
  while (MonotonicNanos() < until) {
    pubs.Serve();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const uint64_t total = per_pub * args.publishers;
  int64_t t0 = MonotonicNanos();
  for (size_t b = 0; b < streams[0].size(); ++b) {
    for (uint32_t p = 0; p < args.publishers; ++p) pubs.Send(p, std::move(streams[p][b]));
    if (b % 64 == 0) pubs.Serve();
  }
  int64_t deadline = MonotonicNanos() + 60'000'000'000;
  while (AppliedOps(idx) < total && MonotonicNanos() < deadline) {
    pubs.Serve();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  double s = (MonotonicNanos() - t0) / 1e9;
  uint64_t applied = AppliedOps(idx);
  uint64_t gaps = 0;
  for (auto p : idx.ActivePublishers()) gaps += idx.publisher_slot(p)->ingest.gaps;
  std::printf(
      "   %u worker%s: %lu of %lu blocks in %.2f s = %.2f M blocks/s (gaps replayed: %lu)\n",
      workers, workers > 1 ? "s" : " ", static_cast<unsigned long>(applied),
      static_cast<unsigned long>(total), s, applied / s / 1e6, static_cast<unsigned long>(gaps));
  StopWorkers(c);
  return applied / s;
}

// B's baseline: the same streams from the same kind of publishers into MapSubscriber.
double EndToEndMap(const Args& args) {
  zmq::context_t ctx(1);
  Publishers pubs(ctx, args.publishers);
  uint64_t per_pub = args.e2e_blocks / args.publishers / 64 * 64;
  std::vector<std::vector<std::vector<uint8_t>>> streams;
  for (uint32_t p = 0; p < args.publishers; ++p) streams.push_back(MakeStream(p, per_pub));
  MapSubscriber sub(pubs);
  if (!sub.WaitSubscribed(pubs)) {
    std::printf("   baseline: the subscriptions did not arrive\n");
    return 0;
  }
  const uint64_t total = per_pub * args.publishers;
  int64_t t0 = MonotonicNanos();
  for (size_t b = 0; b < streams[0].size(); ++b) {
    for (uint32_t p = 0; p < args.publishers; ++p) pubs.Send(p, std::move(streams[p][b]));
  }
  int64_t deadline = MonotonicNanos() + 60'000'000'000;
  while (sub.blocks() < total && MonotonicNanos() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  double s = (MonotonicNanos() - t0) / 1e9;
  std::printf(
      "   baseline, 1 thread here (SUB -> decode -> map): %lu of %lu blocks in %.2f s = %.2f M "
      "blocks/s\n",
      static_cast<unsigned long>(sub.blocks()), static_cast<unsigned long>(total), s,
      sub.blocks() / s / 1e6);
  return sub.blocks() / s;
}

// Publishes 8-block batches at `rate` blocks/s round-robin; after one batch in eight, spins
// until visible(p, b) (the publisher thread is the reader: one timeline) and records the time.
std::vector<int64_t> PacedLatency(const Args& args, Publishers& pubs,
                                  std::vector<std::vector<std::vector<uint8_t>>> streams,
                                  const std::function<bool(uint32_t, size_t)>& visible,
                                  double* achieved) {
  std::vector<int64_t> lat;
  const double batch_interval_ns = 8e9 / args.rate;
  const uint32_t n_pub = static_cast<uint32_t>(streams.size());
  int64_t start = MonotonicNanos();
  size_t sent = 0;
  for (size_t b = 0; b < streams[0].size(); ++b) {
    for (uint32_t p = 0; p < n_pub; ++p, ++sent) {
      int64_t due = start + static_cast<int64_t>(sent * batch_interval_ns);
      // Pace without holding a core: the workers need both of this machine's two.
      while (MonotonicNanos() < due) std::this_thread::yield();
      int64_t t0 = MonotonicNanos();
      pubs.Send(p, std::move(streams[p][b]));
      if (sent % 8 == 0) {  // sample one batch in eight
        int64_t give_up = t0 + 100'000'000;
        while (!visible(p, b) && MonotonicNanos() < give_up) std::this_thread::yield();
        lat.push_back(MonotonicNanos() - t0);
      }
    }
  }
  std::sort(lat.begin(), lat.end());
  *achieved = sent * 8 / ((MonotonicNanos() - start) / 1e9);
  return lat;
}

void Latency(const Args& args) {
  const uint32_t n_pub = 4;
  uint64_t per_pub = 64 * 400;
  std::vector<std::vector<uint64_t>> keys(n_pub);
  std::vector<std::vector<std::vector<uint8_t>>> streams;
  for (uint32_t p = 0; p < n_pub; ++p) streams.push_back(MakeStream(p, per_pub, &keys[p]));
  std::vector<int64_t> lat, base;
  double achieved = 0, base_achieved = 0;
  {
    zmq::context_t ctx(1);
    Publishers pubs(ctx, n_pub);
    Cluster c = StartWorkers(2, pubs, per_pub * n_pub);
    std::unique_ptr<index::Segment> seg;
    for (int i = 0; i < 500 && !seg; ++i) {
      auto s = index::Segment::Attach(c.segment, index::Segment::Access::kReadOnly);
      if (s.ok())
        seg = std::move(*s);
      else
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    index::PrefixIndex idx(seg.get());
    int64_t until = MonotonicNanos() + 1'500'000'000;
    while (MonotonicNanos() < until) {
      pubs.Serve();
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    lat = PacedLatency(
        args, pubs, streams, [&](uint32_t p, size_t b) { return !idx.Holders(keys[p][b]).empty(); },
        &achieved);
    StopWorkers(c);
  }
  {
    zmq::context_t ctx(1);
    Publishers pubs(ctx, n_pub);
    MapSubscriber sub(pubs);
    if (sub.WaitSubscribed(pubs)) {
      base = PacedLatency(
          args, pubs, streams, [&](uint32_t p, size_t b) { return sub.batches(p) > b; },
          &base_achieved);
    }
  }
  auto pct = [](const std::vector<int64_t>& v, double q) {
    return v.empty() ? 0.0 : v[static_cast<size_t>((v.size() - 1) * q)] / 1e3;
  };
  std::printf(
      "C. event to visible at %.0f k blocks/s (%zu samples, 2 workers, TCP loopback):\n"
      "   p50 %.1f us, p99 %.1f us, max %.1f us   goal p99 <= 100 us\n",
      achieved / 1e3, lat.size(), pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1.0));
  std::printf(
      "   baseline, 1 thread here (SUB -> decode -> map) at %.0f k blocks/s:\n"
      "   p50 %.1f us, p99 %.1f us, max %.1f us   map / kvidx: p50 %.2fx, p99 %.2fx\n",
      base_achieved / 1e3, pct(base, 0.5), pct(base, 0.99), pct(base, 1.0),
      pct(base, 0.5) / std::max(pct(lat, 0.5), 1e-9),
      pct(base, 0.99) / std::max(pct(lat, 0.99), 1e-9));
}

}  // namespace
}  // namespace kvidx::bench

int main(int argc, char** argv) {
  kvidx::bench::Args a;
  CLI::App app("ingest_bench: decode + apply in process, end to end over ZeroMQ, latency");
  app.add_option("--blocks", a.blocks, "blocks of the in-process run");
  app.add_option("--e2e-blocks", a.e2e_blocks, "blocks of the end-to-end run");
  app.add_option("--publishers", a.publishers, "simulated engines of the end-to-end run");
  app.add_option("--rate", a.rate, "blocks per second of the latency run");
  CLI11_PARSE(app, argc, argv);
  std::printf("# ingest_bench (2-core machine; the workers and this process share the cores)\n");
  kvidx::bench::InProcess(a);
  std::printf("B. end to end over ZeroMQ/TCP loopback, %u publishers, %u blocks, 8 per batch:\n",
              a.publishers, a.e2e_blocks);
  double one = kvidx::bench::EndToEnd(a, 1);
  double two = kvidx::bench::EndToEnd(a, 2);
  double map = kvidx::bench::EndToEndMap(a);
  std::printf(
      "   2 workers / 1 worker: %.2fx; 2 workers / baseline: %.2fx   goal: 2 workers >= 2 M "
      "blocks/s\n",
      two / std::max(one, 1.0), two / std::max(map, 1.0));
  kvidx::bench::Latency(a);
  return 0;
}
