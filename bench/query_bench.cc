// query_bench: lookups over gRPC on loopback against a real kvidx-query process, each figure
// beside an empty RPC (Ping) on the same server in the same run.
//  - unary latency: Ping vs Lookup of one prompt (p50/p99), one client thread;
//  - batched throughput: Lookup calls carrying N queries, from 2 client threads (--threads),
//    with PodMatch and with columnar answers, beside the same queries answered in process.
// The index is filled in process (no ingest needed) before the server starts.
//
//   query_bench [--calls N] [--batch N] [--blocks N]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/block_key.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "shared/clock.h"

namespace {

struct Args {
  uint32_t calls = 20000;
  uint32_t batch = 64;
  uint32_t prompts = 2000;
  uint32_t threads = 2;
};

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string p(buf, n > 0 ? n : 0);
  return p.substr(0, p.rfind('/'));
}

std::pair<double, double> P50P99(std::vector<int64_t>& v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2] / 1e3, v[v.size() * 99 / 100] / 1e3};
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app("query_bench: kvidx-query on loopback, unary calls of each kind, interleaved");
  app.add_option("--calls", a.calls, "calls of each kind");
  app.add_option("--batch", a.batch, "queries in a batched Lookup");
  app.add_option("--prompts", a.prompts, "prompts in the index");
  app.add_option("--threads", a.threads, "client threads of the batched calls");
  CLI11_PARSE(app, argc, argv);
  // An index of `prompts` prompts of 64 blocks (16 tokens), each held by 4 of 32 pods, with
  // shared 16-block system prompts.
  std::string seg_name = "kvidx-query-bench-" + std::to_string(getpid());
  kvidx::index::Segment::Remove(seg_name);
  kvidx::control::ControlArea::Remove(kvidx::control::ControlName(seg_name));
  kvidx::index::Geometry g;
  g.blocks = a.prompts * 64 + 4096;
  g.pairs = g.blocks * 5;
  g.publishers = 64;
  g.namespaces = 4;
  g.stripes = 256;
  auto seg = kvidx::index::Segment::Create(seg_name, g);
  if (!seg.ok()) {
    std::fprintf(stderr, "%s\n", seg.status().ToString().c_str());
    return 1;
  }
  // The control area is the ingest side's to create; kvidx-query refuses to start without it.
  auto control = kvidx::control::ControlArea::Open(kvidx::control::ControlName(seg_name));
  if (!control.ok()) {
    std::fprintf(stderr, "control area: %s\n", control.status().ToString().c_str());
    kvidx::index::Segment::Remove(seg_name);
    return 1;
  }
  kvidx::index::PrefixIndex idx(seg->get());
  auto ns = *idx.RegisterNamespace({.model = "bench", .block_size = 16});
  std::vector<kvidx::index::PublisherId> pubs;
  for (int p = 0; p < 32; ++p)
    pubs.push_back(*idx.RegisterPublisher({.pod = "pod-" + std::to_string(p), .ns = ns}));
  std::mt19937 rng(3);
  std::vector<std::vector<uint32_t>> prompts;
  for (uint32_t i = 0; i < a.prompts; ++i) {
    std::vector<uint32_t> t(64 * 16);
    for (uint32_t k = 0; k < t.size(); ++k) {
      t[k] = k < 256 ? (i % 8) * 1000 + k : static_cast<uint32_t>(rng() % 150000);
    }
    std::vector<uint64_t> hashes(64);
    for (auto& h : hashes) h = (uint64_t(rng()) << 32) | rng();
    for (int r = 0; r < 4; ++r) {
      kvidx::index::StoreRequest req;
      req.engine_hashes = hashes;
      req.tokens = t;
      (void)idx.Store(pubs[(i + r * 7) % 32], req);
    }
    prompts.push_back(std::move(t));
  }
  // The server, as a real process.
  std::string cfg_path = "/tmp/" + seg_name + ".toml";
  std::string port_path = "/tmp/" + seg_name + ".port";
  unlink(port_path.c_str());
  {
    std::ofstream cfg(cfg_path);
    cfg << "[segment]\nname = \"" << seg_name << "\"\nblocks = " << g.blocks
        << "\npairs = " << g.pairs
        << "\npublishers = 64\nnamespaces = 4\nstripes = 256\n[query]\nlisten = \"127.0.0.1:0"
        << "\"\nmetrics_listen = \"off\"\nadmin_listen = \"off\"\nmax_lookups_per_call = "
           "4096\nmax_inflight_rpcs = 1024\n"
        << "[[model]]\nname = \"bench\"\nblock_size = 16\n";
  }
  pid_t server = fork();
  if (server == 0) {
    setenv("KVIDX_LOG_LEVEL", "error", 1);
    std::string exe = SelfDir() + "/../query/kvidx-query";
    execl(exe.c_str(), exe.c_str(), "--config", cfg_path.c_str(), "--port-file", port_path.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  auto cleanup = [&] {
    kill(server, SIGKILL);
    waitpid(server, nullptr, 0);
    kvidx::index::Segment::Remove(seg_name);
    kvidx::control::ControlArea::Remove(kvidx::control::ControlName(seg_name));
    unlink(cfg_path.c_str());
    unlink(port_path.c_str());
  };
  // The server writes its bound port once it listens; wait for it (15 s at most) or its exit.
  int port = 0;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
       port == 0 && std::chrono::steady_clock::now() < deadline;) {
    std::ifstream in(port_path);
    if (!(in >> port) || waitpid(server, nullptr, WNOHANG) == server) port = 0;
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string addr = "127.0.0.1:" + std::to_string(port);
  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  auto stub = kvidx::v1::KvIndex::NewStub(channel);
  bool up = false;
  if (port != 0) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    ctx.set_wait_for_ready(true);
    kvidx::v1::PingResponse r;
    up = stub->Ping(&ctx, {}, &r).ok();
  }
  if (!up) {
    std::fprintf(stderr, "query_bench: kvidx-query did not answer\n");
    cleanup();
    return 1;
  }
  uint64_t failed = 0;
  auto query_for = [&](size_t i) {
    kvidx::v1::LookupQuery q;
    q.mutable_namespace_()->set_model("bench");
    for (uint32_t t : prompts[i % prompts.size()]) q.mutable_tokens()->add_ids(t);
    return q;
  };
  const uint64_t root = kvidx::index::NamespaceRoot("bench", "");
  auto keys_query_for = [&](size_t i) {
    kvidx::v1::LookupQuery q;
    q.mutable_namespace_()->set_model("bench");
    for (uint64_t k : kvidx::index::ChainBlockKeys(root, prompts[i % prompts.size()], 16)) {
      q.mutable_block_keys()->add_keys(k);
    }
    return q;
  };
  // Unary latency, interleaved so that every kind sees the same machine state.
  std::vector<int64_t> ping_ns, lookup_ns, columnar_ns, keys_ns;
  uint64_t matched = 0;
  auto timed_lookup = [&](const kvidx::v1::LookupRequest& req, std::vector<int64_t>& into) {
    grpc::ClientContext ctx;
    kvidx::v1::LookupResponse r;
    int64_t t0 = kvidx::MonotonicNanos();
    failed += !stub->Lookup(&ctx, req, &r).ok();
    into.push_back(kvidx::MonotonicNanos() - t0);
    return r;
  };
  for (uint32_t i = 0; i < a.calls; ++i) {
    {
      grpc::ClientContext ctx;
      kvidx::v1::PingResponse r;
      int64_t t0 = kvidx::MonotonicNanos();
      (void)stub->Ping(&ctx, {}, &r);
      ping_ns.push_back(kvidx::MonotonicNanos() - t0);
    }
    kvidx::v1::LookupRequest req;
    *req.add_queries() = query_for(i);
    kvidx::v1::LookupResponse r = timed_lookup(req, lookup_ns);
    const int pods = r.results_size() ? r.results(0).matches_size() : 0;
    matched += static_cast<uint64_t>(pods);
    // The columnar answers must name the same number of pods, or the call counts as failed.
    req.set_columnar(true);
    r = timed_lookup(req, columnar_ns);
    failed += (r.results_size() ? r.results(0).columns().pod_size() : 0) != pods;
    kvidx::v1::LookupRequest by_keys;
    *by_keys.add_queries() = keys_query_for(i);
    by_keys.set_columnar(true);
    r = timed_lookup(by_keys, keys_ns);
    failed += (r.results_size() ? r.results(0).columns().pod_size() : 0) != pods;
  }
  auto [pp50, pp99] = P50P99(ping_ns);
  auto [cp50, cp99] = P50P99(columnar_ns);
  auto [kp50, kp99] = P50P99(keys_ns);
  auto [lp50, lp99] = P50P99(lookup_ns);
  // Batched throughput from two client threads, with token ids and with block keys.
  std::atomic<uint64_t> failed_batches{0};
  auto batched = [&](bool keys, bool columnar) {
    std::vector<kvidx::v1::LookupRequest> batches(16);
    for (size_t b = 0; b < batches.size(); ++b) {
      batches[b].set_columnar(columnar);
      for (uint32_t q = 0; q < a.batch; ++q) {
        *batches[b].add_queries() =
            keys ? keys_query_for(b * a.batch + q) : query_for(b * a.batch + q);
      }
    }
    std::atomic<uint64_t> done{0};
    int64_t t0 = kvidx::MonotonicNanos();
    std::vector<std::thread> threads;
    const uint32_t calls_per_thread = std::max<uint32_t>(1, a.calls / a.batch * 4);
    for (uint32_t th = 0; th < a.threads; ++th) {
      threads.emplace_back([&, th] {
        for (uint32_t c = 0; c < calls_per_thread; ++c) {
          grpc::ClientContext ctx;
          kvidx::v1::LookupResponse r;
          if (stub->Lookup(&ctx, batches[(c + th) % batches.size()], &r).ok()) {
            done += r.results_size();
          } else {
            failed_batches.fetch_add(1);
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    return done.load() / ((kvidx::MonotonicNanos() - t0) / 1e9);
  };
  double tokens_rate = batched(false, false);
  double keys_rate = batched(true, false);
  double tokens_col = batched(false, true);
  double keys_col = batched(true, true);
  // The floor: the same queries answered by the index in this process, from 2 threads, with
  // no RPC (the token queries are keyed here as the server keys them).
  std::vector<std::vector<kvidx::index::BlockKey>> prompt_keys;
  for (const auto& t : prompts) prompt_keys.push_back(kvidx::index::ChainBlockKeys(root, t, 16));
  auto in_process = [&](bool keys) {
    std::atomic<uint64_t> done{0};
    const uint32_t per_thread = std::max<uint32_t>(1, a.calls / a.batch * 4) * a.batch;
    int64_t t0 = kvidx::MonotonicNanos();
    std::vector<std::thread> threads;
    for (int th = 0; th < 2; ++th) {
      threads.emplace_back([&, th] {
        kvidx::index::LookupResult r;
        uint64_t n = 0;
        for (uint32_t c = 0; c < per_thread; ++c) {
          size_t i = (c + th * 7) % prompts.size();
          if (keys) {
            idx.LookupInto(prompt_keys[i], {}, r);
          } else {
            idx.LookupInto(kvidx::index::ChainBlockKeys(root, prompts[i], 16), {}, r);
          }
          n += !r.matches.empty();
        }
        done += n;
      });
    }
    for (auto& t : threads) t.join();
    return done.load() / ((kvidx::MonotonicNanos() - t0) / 1e9);
  };
  std::printf(
      "# query_bench: %u prompts of 64 blocks x 16 tokens, each held by 4 of 32 pods;\n"
      "# kvidx-query on loopback, %u unary calls of each kind, interleaved\n",
      a.prompts, a.calls);
  std::printf("%-46s %10s %10s\n", "", "p50 (us)", "p99 (us)");
  std::printf("%-46s %10.1f %10.1f\n", "empty RPC (Ping)", pp50, pp99);
  std::printf("%-46s %10.1f %10.1f\n", "Lookup, 1 prompt of 1024 tokens", lp50, lp99);
  std::printf("%-46s %10.2fx %9.2fx   goal p50 <= 1.1x\n", "Lookup / Ping", lp50 / pp50,
              lp99 / pp99);
  std::printf("%-46s %10.1f %10.1f\n", "the same Lookup, columnar answer", cp50, cp99);
  std::printf("%-46s %10.2fx %9.2fx\n", "  columnar / Ping", cp50 / pp50, cp99 / pp99);
  std::printf("%-46s %10.1f %10.1f\n", "Lookup by its 64 block keys, columnar", kp50, kp99);
  std::printf("%-46s %10.2fx %9.2fx\n", "  keys, columnar / Ping", kp50 / pp50, kp99 / pp99);
  std::printf(
      "batched Lookup, %u queries a call, %u client threads:\n"
      "  by token ids (1024 a query)                  %8.0f k queries/s\n"
      "  by block keys (64 a query)                   %8.0f k queries/s   goal >= 500 k/s\n",
      a.batch, a.threads, tokens_rate / 1e3, keys_rate / 1e3);
  std::printf(
      "the same calls, columnar answers (LookupRequest.columnar: each pod once per call):\n"
      "  by token ids                                 %8.0f k queries/s   columnar / PodMatch "
      "%.2fx\n"
      "  by block keys                                %8.0f k queries/s   columnar / PodMatch "
      "%.2fx\n",
      tokens_col / 1e3, tokens_col / tokens_rate, keys_col / 1e3, keys_col / keys_rate);
  double tokens_floor = in_process(false);
  double keys_floor = in_process(true);
  std::printf(
      "the same queries in this process, no RPC (PrefixIndex::LookupInto), 2 threads:\n"
      "  by token ids                                 %8.0f k queries/s   gRPC / in process %.2fx\n"
      "  by block keys                                %8.0f k queries/s   gRPC / in process "
      "%.2fx\n",
      tokens_floor / 1e3, tokens_rate / tokens_floor, keys_floor / 1e3, keys_rate / keys_floor);
  std::printf("(mean pods matched per lookup: %.2f)\n", static_cast<double>(matched) / a.calls);
  cleanup();
  failed += failed_batches.load();
  if (failed != 0 || matched == 0) {
    std::fprintf(stderr, "query_bench: %lu calls failed, %lu pods matched\n",
                 static_cast<unsigned long>(failed), static_cast<unsigned long>(matched));
    return 1;
  }
  return 0;
}
