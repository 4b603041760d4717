// pinned_bench: the pinned workload (bench/pinned.h) against kvidx's shared-memory index and, in
// the same run and on the same op stream, against the unordered_map + mutex baseline
// (bench/baseline.h) and a real redis-server with the layout routers use (bench/redis_side.h).
// Prints writes (token-keyed), bytes per resident (holder, block), lookup latency per cell
// (1, 8 and 64 holders; the depth-78 gate cell; misses; probes during the fill), with ratios.
// Every answer kvidx gives in the query phase is checked against the baseline's; a difference
// fails the run.
//
//   pinned_bench [--spine-blocks N] [--seed N] [--runs N] [--no-redis]
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/baseline.h"
#include "bench/fleet.h"
#include "bench/pinned.h"
#include "bench/redis_side.h"
#include "index/block_key.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "shared/clock.h"

namespace kvidx::bench {
namespace {

using index::BlockKey;

struct Args {
  uint64_t spine_blocks = 10'000'000;
  uint64_t seed = 20260901;
  int runs = 3;
  bool redis = true;
  bool require_redis = false;
  bool baseline = true;
};

Args Parse(int argc, char** argv) {
  Args a;
  CLI::App app("pinned_bench: the pinned workload on kvidx, an unordered_map and Redis");
  app.add_option("--spine-blocks", a.spine_blocks,
                 "holder-blocks of the shared spines (10,000,000: the published scale)");
  app.add_option("--seed", a.seed, "workload seed");
  app.add_option("--runs", a.runs, "query phases per side (the median of each figure is shown)");
  bool no_redis = false;
  app.add_flag("--no-redis", no_redis, "skip the Redis baseline");
  bool no_baseline = false;
  app.add_flag("--no-baseline", no_baseline,
               "kvidx alone (capacity runs; no exactness check, implies --no-redis)");
  app.add_flag("--require-redis", a.require_redis,
               "fail (exit 3) when the Redis baseline cannot run (the CI smoke run)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  a.baseline = !no_baseline;
  a.redis = !no_redis && a.baseline;
  a.runs = std::max(1, a.runs);
  return a;
}

struct Cell {
  std::string name;
  std::vector<std::vector<BlockKey>> queries;
};

// The block keys of the first `depth` blocks of a family's spine.
std::vector<BlockKey> SpineKeys(const PinnedWorkload& w, BlockKey root, const PinnedFamily& f,
                                uint32_t depth) {
  return index::ChainBlockKeys(root, {w.Tokens(f.first), size_t{depth} * kPinnedTokensPerBlock},
                               kPinnedTokensPerBlock);
}

std::vector<Cell> MakeCells(const PinnedWorkload& w, BlockKey root, std::mt19937_64& rng) {
  auto spine = [&](const PinnedFamily& f, uint32_t depth) { return SpineKeys(w, root, f, depth); };
  std::vector<Cell> cells;
  for (size_t h : {1, 8, 64}) {
    Cell c{"H=" + std::to_string(h), {}};
    for (const PinnedFamily& f : w.families) {
      if (f.holders.size() != h || c.queries.size() >= 2000) continue;
      c.queries.push_back(spine(f, 1 + static_cast<uint32_t>(rng() % f.length)));
    }
    cells.push_back(std::move(c));
  }
  Cell gate{"gate d=78 H=64", {}};
  for (const PinnedFamily& f : w.families) {
    if (f.holders.size() == 64 && f.length >= kGateDepth && gate.queries.size() < 2000) {
      gate.queries.push_back(spine(f, kGateDepth));
    }
  }
  cells.push_back(std::move(gate));
  Cell miss{"miss", {}};
  for (int i = 0; i < 1000; ++i) {
    std::vector<BlockKey> k(1 + rng() % 96);
    for (auto& x : k) x = rng() | 1;
    miss.queries.push_back(std::move(k));
  }
  cells.push_back(std::move(miss));
  return cells;
}

// Probes timed while the fill runs: gate-depth spines of 64-holder families, then spines of
// single-holder families.
std::vector<std::vector<BlockKey>> MakeProbes(const PinnedWorkload& w, BlockKey root) {
  std::vector<std::vector<BlockKey>> probes;
  auto spine = [&](const PinnedFamily& f, uint32_t depth) { return SpineKeys(w, root, f, depth); };
  for (const PinnedFamily& f : w.families) {
    if (f.holders.size() == 64 && f.length >= kGateDepth && probes.size() < 32) {
      probes.push_back(spine(f, kGateDepth));
    }
  }
  for (const PinnedFamily& f : w.families) {
    if (f.holders.size() == 1 && probes.size() < 96)
      probes.push_back(spine(f, std::min(f.length, 64u)));
  }
  return probes;
}

// One side's figures.
struct Figures {
  double fill_s = 0;
  uint64_t bytes = 0;  // memory the side holds for the index
  std::vector<Percentiles> cells;
  Percentiles mixed{};
  bool measured = false;
};

// Applies the op stream through `store` and `remove`, timing `probe` every 250 k stream blocks.
template <typename Store, typename Remove, typename Probe>
void Fill(const PinnedWorkload& w, const std::vector<std::vector<BlockKey>>& probes, Figures& fig,
          Store store, Remove remove, Probe probe) {
  std::vector<uint64_t> hashes(kPinnedBatch);
  std::vector<int64_t> mixed;
  uint64_t since = 0;
  size_t next_probe = 0;
  int64_t t0 = MonotonicNanos();
  for (const PinnedOp& op : w.ops) {
    if (op.kind == PinnedOp::kStore) {
      for (uint32_t i = 0; i < op.count; ++i) hashes[i] = w.EngineHash(op.first + i);
      store(op, hashes.data());
    } else {
      remove(op.holder, w.EngineHash(op.first));
    }
    since += op.count;
    if (since >= 250'000 && !probes.empty()) {
      since = 0;
      int64_t p0 = MonotonicNanos();
      probe(probes[next_probe++ % probes.size()]);
      mixed.push_back(MonotonicNanos() - p0);
    }
  }
  fig.fill_s = static_cast<double>(MonotonicNanos() - t0) / 1e9;
  fig.mixed = Summarize(mixed);
}

// Times every query of every cell `runs` times; keeps, per cell, the median run's percentiles.
template <typename Query>
void QueryPhase(const std::vector<Cell>& cells, int runs, Figures& fig, Query query) {
  std::vector<int64_t> ns;
  for (const Cell& c : cells) {
    std::vector<Percentiles> per_run;
    for (int r = 0; r < runs; ++r) {
      ns.clear();
      for (const auto& q : c.queries) {
        int64_t t0 = MonotonicNanos();
        query(q);
        ns.push_back(MonotonicNanos() - t0);
      }
      per_run.push_back(Summarize(ns));
    }
    auto med = [&](double Percentiles::*f) {
      std::vector<double> v;
      for (const auto& p : per_run) v.push_back(p.*f);
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    fig.cells.push_back({med(&Percentiles::p50), med(&Percentiles::p99), med(&Percentiles::mean)});
  }
  fig.measured = true;
}

using Answer = std::vector<std::pair<uint16_t, uint32_t>>;  // (pod, leading blocks), sorted

int Run(const Args& args) {
  std::printf("# pinned_bench: pinned workload, %lu spine holder-blocks, seed %lu\n",
              static_cast<unsigned long>(args.spine_blocks), static_cast<unsigned long>(args.seed));
  int64_t t0 = MonotonicNanos();
  PinnedWorkload w = MakePinned(args.spine_blocks, args.seed);
  size_t by_h[3] = {0, 0, 0};
  for (const auto& f : w.families)
    by_h[f.holders.size() == 1 ? 0 : f.holders.size() == 8 ? 1 : 2]++;
  std::printf(
      "workload: %zu families (%zu / %zu / %zu held by 1 / 8 / 64), %u distinct blocks, %zu ops, "
      "%lu stream blocks, %lu resident holder-blocks (%.2f holders per block), generated in %.1f "
      "s\n",
      w.families.size(), by_h[0], by_h[1], by_h[2], w.blocks, w.ops.size(),
      static_cast<unsigned long>(w.stream_blocks), static_cast<unsigned long>(w.resident()),
      static_cast<double>(w.resident()) / w.blocks,
      static_cast<double>(MonotonicNanos() - t0) / 1e9);

  // ---- kvidx ----
  std::string name = "kvidx-pinned-" + std::to_string(getpid());
  index::Segment::Remove(name);
  // Tight sizing from the workload's description: its distinct blocks, its residencies, one
  // engine-hash entry per block (the holders share content hashes), the holder chunks its
  // sharing needs (a block of h holders needs ceil((h - 2) / 7)) plus 6 standard deviations of
  // a stripe's share (they come in clumps of up to 9); stripes of about 8 k blocks. ComputeLayout
  // adds each stripe's statistical headroom; the figures below count every byte of the segment.
  const uint32_t stripes = NextPow2(std::max<uint64_t>(64, w.blocks / 8192));
  double chunks = 0, chunks_sq = 0;  // per block c chunks: a stripe's share varies with c^2
  for (const PinnedFamily& f : w.families) {
    uint64_t h = f.holders.size();
    double c =
        h > index::kInlineHolders ? static_cast<double>((h - index::kInlineHolders + 6) / 7) : 0;
    chunks += f.length * c;
    chunks_sq += f.length * c * c;
  }
  const auto chunks_needed =
      static_cast<uint64_t>(stripes * (chunks / stripes + 6 * std::sqrt(chunks_sq / stripes))) + 1;
  index::Geometry g;
  g.blocks = w.blocks;
  g.pairs = w.holder_blocks;
  g.holder_chunks = chunks_needed;
  g.engine_hashes = w.blocks;
  g.publishers = kPinnedHolders + 16;
  g.namespaces = 4;
  g.stripes = stripes;
  auto seg = index::Segment::Create(name, g);
  if (!seg.ok()) {
    std::fprintf(stderr, "segment: %s\n", seg.status().ToString().c_str());
    return 1;
  }
  struct Unlink {
    std::string n;
    ~Unlink() { index::Segment::Remove(n); }
  } unlink_segment{name};
  index::PrefixIndex idx(seg->get());
  index::NamespaceId ns =
      *idx.RegisterNamespace({.model = "pinned", .block_size = kPinnedTokensPerBlock});
  const BlockKey root = idx.namespace_slot(ns)->root;
  std::vector<index::PublisherId> pub(kPinnedHolders);
  for (uint32_t p = 0; p < kPinnedHolders; ++p) {
    pub[p] = *idx.RegisterPublisher({.pod = "holder-" + std::to_string(p), .ns = ns});
  }
  std::vector<uint16_t> holder_of(65536, 0xFFFF);
  for (uint32_t p = 0; p < kPinnedHolders; ++p) holder_of[pub[p]] = static_cast<uint16_t>(p);
  std::mt19937_64 rng(args.seed + 1);
  std::vector<Cell> cells = MakeCells(w, root, rng);
  std::vector<std::vector<BlockKey>> probes = MakeProbes(w, root);
  size_t queries = 0;
  for (const Cell& c : cells) queries += c.queries.size();

  Figures kv, base, red;
  uint64_t orphans = 0;
  index::LookupResult kv_result;
  Fill(
      w, probes, kv,
      [&](const PinnedOp& op, const uint64_t* hashes) {
        index::StoreRequest req;
        if (op.parent >= 0) req.parent_engine_hash = w.EngineHash(static_cast<uint32_t>(op.parent));
        req.engine_hashes = {hashes, op.count};
        req.tokens = {w.Tokens(op.first), size_t{op.count} * kPinnedTokensPerBlock};
        auto r = idx.Store(pub[op.holder], req);
        if (r.ok() && r->orphan) ++orphans;
      },
      [&](uint16_t holder, uint64_t hash) { (void)idx.Remove(pub[holder], index::kGpu, hash); },
      [&](const std::vector<BlockKey>& q) { idx.LookupInto(q, {}, kv_result); });
  index::IndexStats st = idx.Stats();
  kv.bytes = st.segment_bytes;
  QueryPhase(cells, args.runs, kv,
             [&](const std::vector<BlockKey>& q) { idx.LookupInto(q, {}, kv_result); });
  std::printf(
      "kvidx: filled in %.2f s; %lu pairs resident of %lu expected, %lu orphan stores, "
      "%lu blocks evicted, %lu engine-table refusals; "
      "segment %.1f MiB (%lu blocks, %lu pairs, %lu engine hashes of capacity)\n",
      kv.fill_s, static_cast<unsigned long>(st.pairs), static_cast<unsigned long>(w.resident()),
      static_cast<unsigned long>(orphans), static_cast<unsigned long>(st.evicted_blocks),
      static_cast<unsigned long>(st.engine_full), st.segment_bytes / 1048576.0,
      static_cast<unsigned long>(st.block_capacity), static_cast<unsigned long>(st.pair_capacity),
      static_cast<unsigned long>(st.engine_capacity));

  {
    index::Segment::PageReport pr = (*seg)->Pages();
    std::printf("kvidx pages: %.1f MiB resident, %.1f MiB of it in huge pages (%s)\n",
                pr.resident_bytes / 1048576.0, pr.huge_page_bytes / 1048576.0, pr.policy.c_str());
  }

  // ---- the unordered_map baseline ----
  std::vector<Answer> truth;
  if (args.baseline) {
    auto bl = std::make_unique<Baseline>(root, kPinnedTokensPerBlock, kPinnedHolders);
    std::vector<uint32_t> counts;
    std::vector<uint16_t> pods;
    size_t heap0 = mallinfo2().uordblks;
    Fill(
        w, probes, base,
        [&](const PinnedOp& op, const uint64_t* hashes) {
          bl->Store(op.holder,
                    op.parent >= 0
                        ? std::optional<uint64_t>(w.EngineHash(static_cast<uint32_t>(op.parent)))
                        : std::nullopt,
                    hashes, w.Tokens(op.first), op.count);
        },
        [&](uint16_t holder, uint64_t hash) { bl->Remove(holder, hash); },
        [&](const std::vector<BlockKey>& q) { bl->Lookup(q, counts); });
    base.bytes = mallinfo2().uordblks - heap0;
    QueryPhase(cells, args.runs, base,
               [&](const std::vector<BlockKey>& q) { bl->Lookup(q, counts); });
    for (const Cell& c : cells) {
      for (const auto& q : c.queries) {
        bl->Lookup(q, counts, &pods);
        Answer a;
        for (size_t i = 0; i < pods.size(); ++i) a.emplace_back(pods[i], counts[i]);
        std::sort(a.begin(), a.end());
        truth.push_back(std::move(a));
      }
    }
  }  // the baseline's memory goes before Redis fills

  if (!base.measured) base.cells.assign(cells.size(), Percentiles{0, 0, 0});  // printed as 0

  // ---- exactness: kvidx's answers against the baseline's ----
  size_t wrong = 0, qi = 0;
  for (const Cell& c : cells) {
    for (const auto& q : c.queries) {
      if (!args.baseline) break;
      idx.LookupInto(q, {}, kv_result);
      Answer a;
      for (const auto& m : kv_result.matches) a.emplace_back(holder_of[m.publisher], m.blocks);
      std::sort(a.begin(), a.end());
      if (a != truth[qi] && wrong++ < 3) {
        std::string got, want;
        for (auto [h, n] : a) got += " " + std::to_string(h) + ":" + std::to_string(n);
        for (auto [h, n] : truth[qi]) want += " " + std::to_string(h) + ":" + std::to_string(n);
        std::printf("differs (%s, %zu blocks): kvidx%s; baseline%s\n", c.name.c_str(), q.size(),
                    got.c_str(), want.c_str());
      }
      ++qi;
    }
  }

  // ---- Redis ----
  size_t redis_wrong = 0;
  std::string redis_note;
  if (args.redis) {
    RedisServer server;
    if (!server.ok()) {
      redis_note = "not run: " + server.error();
    } else {
      RedisIndex ri(server.ctx(), root, kPinnedTokensPerBlock, kPinnedHolders);
      // The router keeps the block key of each event's last block: every parent is one.
      std::vector<BlockKey> key_of(w.blocks, 0);
      std::vector<uint32_t> counts;
      std::vector<uint16_t> pods;
      uint64_t mem0 = server.UsedMemory();
      Fill(
          w, probes, red,
          [&](const PinnedOp& op, const uint64_t* hashes) {
            BlockKey parent = op.parent >= 0 ? key_of[op.parent] : root;
            key_of[op.first + op.count - 1] =
                ri.Store(op.holder, parent, hashes, w.Tokens(op.first), op.count);
          },
          [&](uint16_t holder, uint64_t hash) { ri.Remove(holder, hash); },
          [&](const std::vector<BlockKey>& q) { ri.Lookup(q, counts, pods); });
      red.bytes = server.UsedMemory() - mem0;
      QueryPhase(cells, 1, red,
                 [&](const std::vector<BlockKey>& q) { ri.Lookup(q, counts, pods); });
      qi = 0;
      for (const Cell& c : cells) {
        for (const auto& q : c.queries) {
          ri.Lookup(q, counts, pods);
          Answer a;
          for (size_t i = 0; i < pods.size(); ++i) a.emplace_back(pods[i], counts[i]);
          std::sort(a.begin(), a.end());
          if (a != truth[qi++]) ++redis_wrong;
        }
      }
    }
  } else {
    redis_note = args.baseline ? "not run (--no-redis)" : "not run (--no-baseline)";
  }

  // ---- the table ----
  auto ratio = [](double base_v, double kv_v) { return kv_v > 0 ? base_v / kv_v : 0.0; };
  std::printf("\n%-40s %12s %12s %8s %12s %8s   %s\n", "figure", "kvidx", "unord_map", "ratio",
              "redis", "ratio", "goal (issue 15)");
  auto row = [&](const char* label, double k, double b, double r, const char* goal) {
    if (red.measured) {
      std::printf("%-40s %12.1f %12.1f %7.2fx %12.1f %7.2fx   %s\n", label, k, b, ratio(b, k), r,
                  ratio(r, k), goal);
    } else {
      std::printf("%-40s %12.1f %12.1f %7.2fx %12s %8s   %s\n", label, k, b, ratio(b, k), "-", "-",
                  goal);
    }
  };
  double res = static_cast<double>(w.resident());
  auto rate = [&](const Figures& f) { return f.fill_s > 0 ? w.stream_blocks / f.fill_s / 1e6 : 0; };
  // Rates: higher is better, so the ratio is kvidx / other.
  if (red.measured) {
    std::printf("%-40s %12.2f %12.2f %7.2fx %12.2f %7.2fx   %s\n",
                "writes, token-keyed (M blocks/s)", rate(kv), rate(base), rate(kv) / rate(base),
                rate(red), rate(kv) / rate(red), ">= 6 (SMG 2.86)");
  } else {
    std::printf("%-40s %12.2f %12.2f %7.2fx %12s %8s   %s\n", "writes, token-keyed (M blocks/s)",
                rate(kv), rate(base), rate(kv) / rate(base), "-", "-", ">= 6 (SMG 2.86)");
  }
  row("bytes per resident (holder, block)", kv.bytes / res, base.bytes / res,
      red.measured ? red.bytes / res : 0, "<= 15 (SMG 21.9)");
  const char* goals[][2] = {{"<= 600 (SMG 890)", "<= 1500 (SMG 1750)"},
                            {"", ""},
                            {"", ""},
                            {"", "<= 4000 (SMG 6050)"},
                            {"<= 50 (SMG 50)", ""}};
  for (size_t c = 0; c < cells.size(); ++c) {
    std::string l50 = "lookup " + cells[c].name + " p50 (ns)";
    std::string l99 = "lookup " + cells[c].name + " p99 (ns)";
    row(l50.c_str(), kv.cells[c].p50, base.cells[c].p50, red.measured ? red.cells[c].p50 : 0,
        goals[c][0]);
    row(l99.c_str(), kv.cells[c].p99, base.cells[c].p99, red.measured ? red.cells[c].p99 : 0,
        goals[c][1]);
  }
  row("lookup during the fill p50 (ns)", kv.mixed.p50, base.mixed.p50,
      red.measured ? red.mixed.p50 : 0, "");
  row("lookup during the fill p99 (ns)", kv.mixed.p99, base.mixed.p99,
      red.measured ? red.mixed.p99 : 0, "");
  std::printf(
      "\n(ratios: > 1 means kvidx is better; %zu queries per phase, cells %zu / %zu / %zu / %zu / "
      "%zu; median of %d query phases for kvidx and the map, 1 for Redis; %zu fill probes)\n",
      queries, cells[0].queries.size(), cells[1].queries.size(), cells[2].queries.size(),
      cells[3].queries.size(), cells[4].queries.size(), args.runs,
      kv.mixed.p50 > 0 ? probes.size() : size_t{0});
  if (!args.baseline) {
    std::printf("exactness: not checked (--no-baseline)\n");
  } else {
    std::printf(
        "exactness: kvidx %zu of %zu answers differ from the baseline's; Redis %s\n", wrong,
        queries,
        red.measured ? (std::to_string(redis_wrong) + " differ").c_str() : redis_note.c_str());
  }
  if (wrong != 0 || redis_wrong != 0) return 2;
  return args.require_redis && !red.measured ? 3 : 0;
}

}  // namespace
}  // namespace kvidx::bench

int main(int argc, char** argv) { return kvidx::bench::Run(kvidx::bench::Parse(argc, argv)); }
