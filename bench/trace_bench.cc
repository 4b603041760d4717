// trace_bench: the Mooncake conversation trace (bench/mooncake.h) replayed through a router and
// a fleet of LRU pods, with the same events and lookups applied to kvidx's shared-memory index,
// the unordered_map + mutex baseline and (with --redis) a real redis-server in the routers'
// layout. Prints block events per second, lookup latency per request and bytes per resident
// (pod, block), with ratios, and checks every answer of every side against the pods' caches
// (the model): any difference fails the run (exit 2).
//
//   trace_bench [--trace FILE] [--requests N] [--pods N] [--capacity BLOCKS]
//               [--block-tokens N] [--redis] [--require-redis]
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/baseline.h"
#include "bench/fleet.h"
#include "bench/mooncake.h"
#include "bench/redis_side.h"
#include "index/block_key.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "shared/clock.h"

namespace kvidx::bench {
namespace {

using index::BlockKey;

struct Args {
  std::string trace = "../shared/traces/mooncake_conversation_trace.jsonl";
  size_t requests = 0;
  uint32_t pods = 16;
  uint32_t capacity = 65536;
  uint32_t block_tokens = 16;
  bool redis = false;
  bool require_redis = false;
};

Args Parse(int argc, char** argv) {
  Args a;
  CLI::App app("trace_bench: the Mooncake trace on kvidx, an unordered_map and Redis");
  app.add_option("--trace", a.trace, "the trace (JSON lines with timestamp and hash_ids)");
  app.add_option("--requests", a.requests, "replay the first N requests (0: all)");
  app.add_option("--pods", a.pods, "pods the router spreads requests over (1..64)");
  app.add_option("--capacity", a.capacity, "blocks each pod's KV cache holds (LRU)");
  app.add_option("--block-tokens", a.block_tokens, "tokens per engine block (divides 512)");
  app.add_flag("--redis", a.redis, "also replay into a real redis-server (slow: minutes)");
  app.add_flag("--require-redis", a.require_redis,
               "with --redis: fail (exit 3) when Redis cannot run (the CI smoke run)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e));
  }
  return a;
}

// One side's figures.
struct Figures {
  bool measured = false;
  double apply_s = 0;  // time in store and remove events
  Percentiles lookup{};
  uint64_t bytes = 0;
  size_t wrong = 0;
};

using Answer = std::vector<std::pair<uint16_t, uint32_t>>;

// Replays the workload: per request, the router's lookup (timed alone, answer checked against
// the model) and then the request's events (timed together).
template <typename Store, typename Remove, typename Lookup>
void Replay(const TraceWorkload& w, const std::vector<BlockKey>& key_of, Figures& fig, Store store,
            Remove remove, Lookup lookup) {
  std::vector<int64_t> ns;
  ns.reserve(w.steps.size());
  std::vector<BlockKey> q;
  Answer got;
  std::vector<uint64_t> removed;
  int64_t apply = 0;
  for (const TraceStep& s : w.steps) {
    const TraceRequest& r = w.requests[s.request];
    q.clear();
    for (size_t i = 0; i < w.Blocks(r); ++i) q.push_back(key_of[w.Block(r, i)]);
    int64_t t0 = MonotonicNanos();
    lookup(q, got);
    ns.push_back(MonotonicNanos() - t0);
    std::sort(got.begin(), got.end());
    if (got != s.truth && fig.wrong++ < 3) {
      std::printf("request %u: %zu pods answered, %zu hold its first block\n", s.request,
                  got.size(), s.truth.size());
    }
    t0 = MonotonicNanos();
    for (uint32_t o = s.ops_begin; o < s.ops_end;) {
      const TraceOp& op = w.ops[o];
      if (op.kind == TraceOp::kStore) {
        store(op);
        ++o;
        continue;
      }
      // A request's evictions from one pod go out as one remove event (vLLM batches them).
      removed.clear();
      for (; o < s.ops_end && w.ops[o].kind == TraceOp::kRemove && w.ops[o].pod == op.pod; ++o)
        removed.push_back(w.EngineHash(w.ops[o].first));
      remove(op.pod, removed);
    }
    apply += MonotonicNanos() - t0;
  }
  fig.apply_s = static_cast<double>(apply) / 1e9;
  fig.lookup = Summarize(ns);
  fig.measured = true;
}

int Run(const Args& args) {
  int64_t t0 = MonotonicNanos();
  TraceWorkload w;
  try {
    w = MakeTraceWorkload(ReadTrace(args.trace, args.requests), args.pods, args.capacity,
                          args.block_tokens);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "trace_bench: %s\n", e.what());
    return 1;
  }
  // Each side needs every block's tokens (stores) and key (lookups): computed once here.
  std::vector<uint32_t> tokens(size_t{w.blocks} * w.block_tokens);
  for (uint32_t b = 0; b < w.blocks; ++b)
    for (uint32_t j = 0; j < w.block_tokens; ++j)
      tokens[size_t{b} * w.block_tokens + j] = w.Token(b, j);
  auto tokens_of = [&](uint32_t b) { return &tokens[size_t{b} * w.block_tokens]; };
  const double gen_s = static_cast<double>(MonotonicNanos() - t0) / 1e9;

  const int64_t span_ms = w.requests.empty() ? 0 : w.requests.back().timestamp_ms;
  std::printf("# trace_bench: %s, %zu requests over %.1f min of trace time\n", args.trace.c_str(),
              w.requests.size(), static_cast<double>(span_ms) / 60000.0);
  std::printf(
      "workload: %u pods x %u blocks of %u tokens (LRU); %lu prompt blocks (%.0f per request), "
      "%lu block stores, %lu block removes; peak %lu resident (pod, block) pairs over %lu "
      "distinct blocks; built in %.1f s\n",
      w.pods, w.capacity, w.block_tokens, static_cast<unsigned long>(w.prompt_blocks),
      w.requests.empty() ? 0.0 : static_cast<double>(w.prompt_blocks) / w.requests.size(),
      static_cast<unsigned long>(w.stores), static_cast<unsigned long>(w.removes),
      static_cast<unsigned long>(w.peak_pairs), static_cast<unsigned long>(w.peak_distinct), gen_s);
  const double hit = w.prompt_blocks ? static_cast<double>(w.matched_blocks) / w.prompt_blocks : 0;
  std::printf("routing: prefix-aware hit ratio %.1f%% of prompt blocks; round-robin %.1f%%\n",
              100 * hit, 100 * w.round_robin_hit);

  // ---- kvidx, sized from the workload's peak ----
  std::string name = "kvidx-trace-" + std::to_string(getpid());
  index::Segment::Remove(name);
  index::Geometry g = GeometryFor(w.peak_distinct, w.peak_pairs, w.pods + 16);
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
      *idx.RegisterNamespace({.model = "mooncake", .block_size = w.block_tokens});
  const BlockKey root = idx.namespace_slot(ns)->root;
  std::vector<index::PublisherId> pub(w.pods);
  std::vector<uint16_t> pod_of(65536, 0xFFFF);
  for (uint32_t p = 0; p < w.pods; ++p) {
    pub[p] = *idx.RegisterPublisher({.pod = "pod-" + std::to_string(p), .ns = ns});
    pod_of[pub[p]] = static_cast<uint16_t>(p);
  }
  // Block keys: an id's first block chains from the previous id's last block (any request
  // holding the id has the same prefix), so one pass in request order keys them all.
  std::vector<BlockKey> key_of(w.blocks, 0);
  std::vector<bool> keyed(w.blocks, false);
  for (const TraceRequest& r : w.requests) {
    BlockKey parent = root;
    for (size_t i = 0; i < w.Blocks(r); ++i) {
      const uint32_t b = w.Block(r, i);
      if (!keyed[b]) key_of[b] = index::ChainBlockKey(parent, {tokens_of(b), w.block_tokens});
      keyed[b] = true;
      parent = key_of[b];
    }
  }

  std::vector<uint64_t> hashes(w.split);
  auto hashes_of = [&](const TraceOp& op) {
    for (uint32_t i = 0; i < op.count; ++i) hashes[i] = w.EngineHash(op.first + i);
    return hashes.data();
  };
  Figures kv, base, red;
  uint64_t orphans = 0;
  index::LookupResult res;
  Replay(
      w, key_of, kv,
      [&](const TraceOp& op) {
        index::StoreRequest req;
        if (op.parent >= 0) req.parent_engine_hash = w.EngineHash(static_cast<uint32_t>(op.parent));
        req.engine_hashes = {hashes_of(op), op.count};
        req.tokens = {tokens_of(op.first), size_t{op.count} * w.block_tokens};
        auto r = idx.Store(pub[op.pod], req);
        if (r.ok() && r->orphan) ++orphans;
      },
      [&](uint16_t pod, const std::vector<uint64_t>& hs) {
        for (uint64_t h : hs) (void)idx.Remove(pub[pod], index::kGpu, h);
      },
      [&](const std::vector<BlockKey>& q, Answer& a) {
        idx.LookupInto(q, {}, res);
        a.clear();
        for (const auto& m : res.matches) a.emplace_back(pod_of[m.publisher], m.blocks);
      });
  index::IndexStats st = idx.Stats();
  kv.bytes = st.segment_bytes;
  std::printf(
      "kvidx: %lu pairs resident (the model: %lu), %lu orphan stores, %lu blocks evicted, %lu "
      "engine-table refusals; segment %.1f MiB (%lu blocks, %lu pairs, %lu engine hashes of "
      "capacity)\n",
      static_cast<unsigned long>(st.pairs), static_cast<unsigned long>(w.final_pairs),
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
  {
    auto bl = std::make_unique<Baseline>(root, w.block_tokens, w.pods);
    std::vector<uint32_t> counts;
    std::vector<uint16_t> pods;
    size_t heap0 = mallinfo2().uordblks;
    Replay(
        w, key_of, base,
        [&](const TraceOp& op) {
          bl->Store(op.pod,
                    op.parent >= 0
                        ? std::optional<uint64_t>(w.EngineHash(static_cast<uint32_t>(op.parent)))
                        : std::nullopt,
                    hashes_of(op), tokens_of(op.first), op.count);
        },
        [&](uint16_t pod, const std::vector<uint64_t>& hs) {
          for (uint64_t h : hs) bl->Remove(pod, h);
        },
        [&](const std::vector<BlockKey>& q, Answer& a) {
          bl->Lookup(q, counts, &pods);
          a.clear();
          for (size_t i = 0; i < pods.size(); ++i) a.emplace_back(pods[i], counts[i]);
        });
    base.bytes = mallinfo2().uordblks - heap0;
  }

  // ---- Redis ----
  std::string redis_note = "not run (add --redis)";
  if (args.redis) {
    RedisServer server;
    if (!server.ok()) {
      redis_note = "not run: " + server.error();
    } else {
      RedisIndex ri(server.ctx(), root, w.block_tokens, w.pods);
      std::vector<uint32_t> counts;
      std::vector<uint16_t> pods;
      uint64_t mem0 = server.UsedMemory();
      Replay(
          w, key_of, red,
          [&](const TraceOp& op) {
            BlockKey parent = op.parent >= 0 ? key_of[op.parent] : root;
            ri.Store(op.pod, parent, hashes_of(op), tokens_of(op.first), op.count);
          },
          [&](uint16_t pod, const std::vector<uint64_t>& hs) {
            ri.RemoveMany(pod, hs.data(), hs.size());
          },
          [&](const std::vector<BlockKey>& q, Answer& a) {
            ri.Lookup(q, counts, pods);
            a.clear();
            for (size_t i = 0; i < pods.size(); ++i) a.emplace_back(pods[i], counts[i]);
          });
      red.bytes = server.UsedMemory() - mem0;
    }
  }

  // ---- the table ----
  const double events = static_cast<double>(w.stores + w.removes);
  const double pairs = static_cast<double>(std::max<uint64_t>(1, w.final_pairs));
  auto rate = [&](const Figures& f) { return f.apply_s > 0 ? events / f.apply_s / 1e6 : 0; };
  std::printf("\n%-40s %12s %12s %8s %12s %8s\n", "figure", "kvidx", "unord_map", "ratio", "redis",
              "ratio");
  // Rates: higher is better (kvidx / other); sizes and latencies: other / kvidx.
  auto row = [&](const char* label, double k, double b, double r, bool higher_better) {
    auto ratio = [&](double o) {
      return higher_better ? (o > 0 ? k / o : 0) : (k > 0 ? o / k : 0);
    };
    if (red.measured) {
      std::printf("%-40s %12.2f %12.2f %7.2fx %12.2f %7.2fx\n", label, k, b, ratio(b), r, ratio(r));
    } else {
      std::printf("%-40s %12.2f %12.2f %7.2fx %12s %8s\n", label, k, b, ratio(b), "-", "-");
    }
  };
  row("block events applied (M blocks/s)", rate(kv), rate(base), rate(red), true);
  row("lookup per request p50 (us)", kv.lookup.p50 / 1e3, base.lookup.p50 / 1e3,
      red.lookup.p50 / 1e3, false);
  row("lookup per request p99 (us)", kv.lookup.p99 / 1e3, base.lookup.p99 / 1e3,
      red.lookup.p99 / 1e3, false);
  row("lookup per request mean (us)", kv.lookup.mean / 1e3, base.lookup.mean / 1e3,
      red.lookup.mean / 1e3, false);
  row("bytes per resident (pod, block)", kv.bytes / pairs, base.bytes / pairs, red.bytes / pairs,
      false);
  const double trace_s = static_cast<double>(span_ms) / 1e3;
  const double kv_s = kv.apply_s + kv.lookup.mean * static_cast<double>(w.steps.size()) / 1e9;
  std::printf(
      "\n(ratios: > 1 means kvidx is better; %zu lookups of %.0f keys on average; kvidx replays "
      "the trace's %.0f s of traffic in %.2f s of index time, %.0fx real time)\n",
      w.steps.size(), w.steps.empty() ? 0.0 : static_cast<double>(w.prompt_blocks) / w.steps.size(),
      trace_s, kv_s, kv_s > 0 ? trace_s / kv_s : 0.0);
  std::printf("exactness against the pods' caches: kvidx %zu of %zu differ; map %zu; Redis %s\n",
              kv.wrong, w.steps.size(), base.wrong,
              red.measured ? (std::to_string(red.wrong) + " differ").c_str() : redis_note.c_str());
  if (kv.wrong != 0 || base.wrong != 0 || red.wrong != 0 || st.pairs != w.final_pairs) return 2;
  return args.redis && args.require_redis && !red.measured ? 3 : 0;
}

}  // namespace
}  // namespace kvidx::bench

int main(int argc, char** argv) { return kvidx::bench::Run(kvidx::bench::Parse(argc, argv)); }
