// index_bench: the fleet workload (DESIGN.md §7) against kvidx's shared-memory index and, in the
// same run, against a baseline (std::unordered_map under a std::mutex). Prints apply rate,
// lookup latency while a writer runs, and memory per (pod, block) pair, with ratios.
//
//   index_bench [--blocks N] [--lookups N] [--seed N]
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/baseline.h"
#include "bench/fleet.h"
#include "index/block_key.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "shared/clock.h"

namespace kvidx::bench {
namespace {

using index::BlockKey;

struct Args {
  uint32_t blocks = 1'000'000;
  uint32_t lookups = 200'000;
  uint64_t seed = 42;
};

Args Parse(int argc, char** argv) {
  Args a;
  CLI::App app("index_bench: kvidx's prefix index against an unordered_map baseline");
  app.add_option("--blocks", a.blocks, "target distinct blocks of the fleet workload");
  app.add_option("--lookups", a.lookups, "lookups per set");
  app.add_option("--seed", a.seed, "workload seed");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  return a;
}

struct LookupSets {
  std::vector<std::vector<BlockKey>> single;  // prefix + tail of single-holder groups
  std::vector<std::vector<BlockKey>> worst;   // prefix + tail of 64-holder groups
  std::vector<std::vector<BlockKey>> miss;
};

LookupSets MakeLookups(const Fleet& f, BlockKey root, std::mt19937_64& rng) {
  LookupSets s;
  for (size_t ci = 0; ci + 1 < f.chains.size(); ci += 2) {
    const FleetChain& p = f.chains[ci];
    const FleetChain& t = f.chains[ci + 1];
    std::vector<uint32_t> tokens(f.Tokens(p.first),
                                 f.Tokens(t.first) + size_t{t.length} * kTokensPerBlock);
    if (p.holders_class == 1 && s.single.size() < 4000) {
      s.single.push_back(index::ChainBlockKeys(root, tokens, kTokensPerBlock));
    } else if (p.holders_class == 64 && s.worst.size() < 1000) {
      s.worst.push_back(index::ChainBlockKeys(root, tokens, kTokensPerBlock));
    }
  }
  for (int i = 0; i < 1000; ++i) {
    std::vector<BlockKey> k(32);
    for (auto& x : k) x = rng();
    s.miss.push_back(std::move(k));
  }
  return s;
}

// Churn that runs beside the lookups: a pod drops and re-stores the tail of one of its chains.
template <typename RemoveFn, typename StoreFn>
void Churn(const Fleet& f, std::atomic<bool>& stop, std::atomic<uint64_t>& ops, RemoveFn remove,
           StoreFn store) {
  std::mt19937_64 rng(99);
  std::vector<uint64_t> hashes;
  while (!stop.load(std::memory_order_relaxed)) {
    const FleetChain& t = f.chains[1 + 2 * (rng() % (f.chains.size() / 2))];
    uint16_t pod = t.pods[0];
    uint32_t n = std::min(8u, t.length);
    hashes.clear();
    for (uint32_t i = 0; i < n; ++i) hashes.push_back(f.EngineHash(t.first + i));
    for (uint32_t i = n; i-- > 0;) remove(pod, hashes[i]);
    store(pod, t.parent, hashes.data(), f.Tokens(t.first), n);
    ops.fetch_add(2 * n, std::memory_order_relaxed);
  }
}

template <typename F>
Percentiles TimeLookups(const std::vector<std::vector<BlockKey>>& set, uint32_t n, F&& fn,
                        double* rate = nullptr) {
  std::vector<int64_t> ns;
  ns.reserve(n);
  int64_t start = MonotonicNanos();
  for (uint32_t i = 0; i < n; ++i) {
    const auto& keys = set[i % set.size()];
    auto t0 = std::chrono::steady_clock::now();
    fn(keys);
    ns.push_back((std::chrono::steady_clock::now() - t0).count());
  }
  if (rate) *rate = n / ((MonotonicNanos() - start) / 1e9);
  return Summarize(ns);
}

int Run(const Args& args) {
  std::printf("# index_bench: fleet workload, %u target blocks, %u lookups per set\n", args.blocks,
              args.lookups);
  int64_t t0 = MonotonicNanos();
  Fleet f = MakeFleet(args.blocks, args.seed);
  uint64_t store_blocks = 0;
  for (const auto& b : f.batches) store_blocks += b.count;
  std::printf(
      "workload: %u blocks (%.0f%% 1 holder, %.0f%% 8 holders, %.0f%% 64 holders), "
      "%lu (pod, block) pairs, %zu store batches of <= 8, %lu block stores "
      "(generated in %.1f s)\n",
      f.blocks, 100.0 * f.blocks_by_class[0] / f.blocks, 100.0 * f.blocks_by_class[1] / f.blocks,
      100.0 * f.blocks_by_class[2] / f.blocks, static_cast<unsigned long>(f.pairs),
      f.batches.size(), static_cast<unsigned long>(store_blocks), (MonotonicNanos() - t0) / 1e9);

  // ---- kvidx ----
  std::string name = "kvidx-bench-" + std::to_string(getpid());
  index::Segment::Remove(name);
  index::Geometry g = GeometryFor(f.blocks, f.pairs);
  auto seg = index::Segment::Create(name, g);
  if (!seg.ok()) {
    std::fprintf(stderr, "segment: %s\n", seg.status().ToString().c_str());
    return 1;
  }
  index::PrefixIndex idx(seg->get());
  index::NamespaceId ns = *idx.RegisterNamespace({.model = "fleet", .block_size = kTokensPerBlock});
  BlockKey root = idx.namespace_slot(ns)->root;
  std::vector<index::PublisherId> pub(kFleetPods);
  for (uint32_t p = 0; p < kFleetPods; ++p) {
    pub[p] = *idx.RegisterPublisher({.pod = "pod-" + std::to_string(p), .ns = ns});
  }
  std::vector<uint64_t> hashes(8);
  auto kv_store = [&](uint16_t pod, int64_t parent, const uint64_t* h, const uint32_t* tokens,
                      uint32_t n) {
    index::StoreRequest req;
    if (parent >= 0) req.parent_engine_hash = f.EngineHash(static_cast<uint32_t>(parent));
    req.engine_hashes = {h, n};
    req.tokens = {tokens, size_t{n} * kTokensPerBlock};
    (void)idx.Store(pub[pod], req);
  };
  t0 = MonotonicNanos();
  for (const auto& b : f.batches) {
    for (uint32_t i = 0; i < b.count; ++i) hashes[i] = f.EngineHash(b.first + i);
    kv_store(b.pod, b.parent, hashes.data(), f.Tokens(b.first), b.count);
  }
  double kv_apply_s = (MonotonicNanos() - t0) / 1e9;
  index::IndexStats st = idx.Stats();

  // ---- baseline ----
  Baseline base(root, kTokensPerBlock, kFleetPods);
  size_t heap0 = mallinfo2().uordblks;
  t0 = MonotonicNanos();
  for (const auto& b : f.batches) {
    for (uint32_t i = 0; i < b.count; ++i) hashes[i] = f.EngineHash(b.first + i);
    base.Store(b.pod,
               b.parent >= 0
                   ? std::optional<uint64_t>(f.EngineHash(static_cast<uint32_t>(b.parent)))
                   : std::nullopt,
               hashes.data(), f.Tokens(b.first), b.count);
  }
  double base_apply_s = (MonotonicNanos() - t0) / 1e9;
  size_t base_bytes = mallinfo2().uordblks - heap0;

  // ---- lookups while a writer churns ----
  std::mt19937_64 rng(args.seed + 1);
  LookupSets sets = MakeLookups(f, root, rng);
  std::vector<std::vector<BlockKey>> mixed;
  for (size_t i = 0; i < 5000; ++i) {
    uint64_t r = rng() % 100;
    if (r < 20)
      mixed.push_back(sets.miss[rng() % sets.miss.size()]);
    else if (r < 60)
      mixed.push_back(sets.single[rng() % sets.single.size()]);
    else
      mixed.push_back(sets.worst[rng() % sets.worst.size()]);
  }
  struct Row {
    Percentiles single, worst, mix;
    double mix_rate;
    uint64_t churn_ops;
  };
  auto measure = [&](auto lookup, auto remove, auto store) {
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> ops{0};
    std::thread writer([&] { Churn(f, stop, ops, remove, store); });
    Row r{};
    r.single = TimeLookups(sets.single, args.lookups, lookup);
    r.worst = TimeLookups(sets.worst, args.lookups / 4, lookup);
    r.mix = TimeLookups(mixed, args.lookups, lookup, &r.mix_rate);
    stop = true;
    writer.join();
    r.churn_ops = ops.load();
    return r;
  };
  uint64_t sink = 0;
  Row kv = measure([&](const std::vector<BlockKey>& k) { sink += idx.Lookup(k).matches.size(); },
                   [&](uint16_t pod, uint64_t h) { (void)idx.Remove(pub[pod], index::kGpu, h); },
                   kv_store);
  std::vector<uint32_t> counts;
  Row bl = measure(
      [&](const std::vector<BlockKey>& k) { sink += base.Lookup(k, counts); },
      [&](uint16_t pod, uint64_t h) { base.Remove(pod, h); },
      [&](uint16_t pod, int64_t parent, const uint64_t* h, const uint32_t* tokens, uint32_t n) {
        base.Store(pod,
                   parent >= 0
                       ? std::optional<uint64_t>(f.EngineHash(static_cast<uint32_t>(parent)))
                       : std::nullopt,
                   h, tokens, n);
      });

  double kv_rate = store_blocks / kv_apply_s;
  double bl_rate = store_blocks / base_apply_s;
  double kv_bpp = static_cast<double>(st.segment_bytes) / st.pairs;
  double bl_bpp = static_cast<double>(base_bytes) / f.pairs;
  std::printf("\n%-44s %14s %14s %9s   %s\n", "figure", "kvidx", "baseline", "ratio",
              "goal (DESIGN.md §7)");
  std::printf("%-44s %14.2f %14.2f %8.2fx   >= 6 M/s\n", "apply, 1 writer (M block stores/s)",
              kv_rate / 1e6, bl_rate / 1e6, kv_rate / bl_rate);
  std::printf("%-44s %14.0f %14.0f %8.2fx   <= 250 ns\n", "lookup single holder p50 (ns)",
              kv.single.p50, bl.single.p50, bl.single.p50 / kv.single.p50);
  double single_len = 0;
  for (const auto& k : sets.single) single_len += k.size();
  single_len /= sets.single.size();
  std::printf("%-44s %14.1f %14.1f %8.2fx   (mean %.0f blocks a lookup)\n",
              "lookup single holder, mean per block (ns)", kv.single.mean / single_len,
              bl.single.mean / single_len, bl.single.mean / kv.single.mean, single_len);
  std::printf("%-44s %14.0f %14.0f %8.2fx\n", "lookup single holder p99 (ns)", kv.single.p99,
              bl.single.p99, bl.single.p99 / kv.single.p99);
  std::printf("%-44s %14.0f %14.0f %8.2fx\n", "lookup 64 holders p50 (ns)", kv.worst.p50,
              bl.worst.p50, bl.worst.p50 / kv.worst.p50);
  std::printf("%-44s %14.0f %14.0f %8.2fx   <= 5000 ns\n",
              "lookup 64 holders (worst case) p99 (ns)", kv.worst.p99, bl.worst.p99,
              bl.worst.p99 / kv.worst.p99);
  std::printf("%-44s %14.0f %14.0f %8.2fx\n", "lookup mixed (20% miss) p50 (ns)", kv.mix.p50,
              bl.mix.p50, bl.mix.p50 / kv.mix.p50);
  std::printf("%-44s %14.2f %14.2f %8.2fx\n", "lookup mixed, 1 thread (M lookups/s)",
              kv.mix_rate / 1e6, bl.mix_rate / 1e6, kv.mix_rate / bl.mix_rate);
  std::printf("%-44s %14.2f %14.2f %8.2fx\n", "writer churn beside lookups (M ops/s)",
              kv.churn_ops / 1e6 / 1, bl.churn_ops / 1e6 / 1,
              static_cast<double>(kv.churn_ops) / std::max<uint64_t>(1, bl.churn_ops));
  std::printf("%-44s %14.1f %14.1f %8.2fx   <= 20 B\n", "memory per (pod, block) pair (bytes)",
              kv_bpp, bl_bpp, bl_bpp / kv_bpp);
  std::printf(
      "\nkvidx segment: %.1f MiB for %lu pairs, %lu blocks (capacity %lu / %lu), "
      "%lu engine-hash entries, preallocated: yes (baseline heap %.1f MiB)\n",
      st.segment_bytes / 1048576.0, static_cast<unsigned long>(st.pairs),
      static_cast<unsigned long>(st.blocks), static_cast<unsigned long>(st.pair_capacity),
      static_cast<unsigned long>(st.block_capacity), static_cast<unsigned long>(st.engine_entries),
      base_bytes / 1048576.0);
  std::printf(
      "(ratios: > 1 means kvidx is better; lookups measured with a writer thread "
      "churning the same index; sink %lu)\n",
      static_cast<unsigned long>(sink % 10));
  index::Segment::Remove(name);
  return 0;
}

}  // namespace
}  // namespace kvidx::bench

int main(int argc, char** argv) { return kvidx::bench::Run(kvidx::bench::Parse(argc, argv)); }
