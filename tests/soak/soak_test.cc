// Soak (issue 11): three independent engine publishers (tests/integration/engine_peer.py: LRU
// caches, 5 % of live batches lost), one kvidx-ingest worker, one kvidx-query, run for
// KVIDX_SOAK_SECONDS (default 600; the test command sets 30) with faults between rounds: engine
// restarts, the worker SIGKILLed and started again, a burst of garbage frames from a fourth
// publisher. After each round quiesces the test samples every process's resident set, the
// segment's occupancy, the p50/p99 of a burst of gRPC lookups, and the index against each
// engine's own record of what it holds. It fails if any sample is inexact, or if a process's
// resident set grows past its warm-up peak by more than 16 MiB + 25 %. The samples are printed
// as a table (and written to $KVIDX_SOAK_CSV if set).
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/engine_peer.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

std::set<uint64_t> Holdings(Engine& e) {
  std::set<uint64_t> want;
  std::istringstream in(e.Do("holdings"));
  std::string k;
  while (in >> k) {
    if (k != "ok") want.insert(std::stoull(k, nullptr, 16));
  }
  return want;
}

constexpr int kEngines = 3;

TEST(SoakTest, PublishersWithFaultsStayExactWithBoundedMemory) {
  const char* env = std::getenv("KVIDX_SOAK_SECONDS");
  const int seconds = env != nullptr ? std::atoi(env) : 600;
  const std::string dir = "/tmp/kvidx-soak-" + std::to_string(getpid());
  const std::string segment = "kvidx-soak-" + std::to_string(getpid());
  mkdir(dir.c_str(), 0755);
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
  struct Cleanup {
    std::string segment;
    ~Cleanup() {
      index::Segment::Remove(segment);
      control::ControlArea::Remove(control::ControlName(segment));
    }
  } cleanup{segment};

  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<std::pair<int, int>> ports;
  for (int i = 0; i < kEngines; ++i) {
    std::string d = dir + "/engine" + std::to_string(i);
    mkdir(d.c_str(), 0755);
    engines.push_back(std::make_unique<Engine>(d, 100 + i));
    ports.push_back(PeerPorts(d + "/ports"));
    ASSERT_GT(ports.back().first, 0) << engines.back()->Log();
  }
  // A fourth publisher that sends garbage now and then (hostile_peer.py, small counts).
  std::unique_ptr<Process> garbage;
  auto start_garbage = [&](int round) {
    std::string d = dir + "/garbage" + std::to_string(round);
    mkdir(d.c_str(), 0755);
    garbage =
        std::make_unique<Process>(std::vector<std::string>{"/usr/bin/python3",
                                                           std::string(KVIDX_SOURCE_ROOT) +
                                                               "/tests/integration/hostile_peer.py",
                                                           d, "2000", "200"},
                                  d + "/log");
    return PeerPorts(d + "/ports");
  };
  auto [gpub, grouter] = start_garbage(0);
  {
    std::ofstream cfg(dir + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment
        << "\"\nblocks = 100000\npairs = 200000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 500\nreconnect_initial_ms = 50\n"
        << "reconnect_max_ms = 200\nidle_probe_ms = 300\n"
        << "queue_bytes = 67108864\nreplay_buffer_bytes = 16777216\n"
        << "sequence_table_bytes = 4194304\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n"
        << "admin_listen = \"unix:" << dir << "/admin.sock\"\n"
        << "[[model]]\nname = \"peer-model\"\nblock_size = 4\n"
        << "[[model]]\nname = \"hm\"\nblock_size = 4\n";
    for (int i = 0; i < kEngines; ++i) {
      cfg << "[[publisher]]\npod = \"engine" << i
          << "\"\nmodel = \"peer-model\"\ndialect = \"vllm\"\ntopic = \"kv\"\n"
          << "endpoint = \"tcp://127.0.0.1:" << ports[i].first
          << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << ports[i].second << "\"\n";
    }
    cfg << "[[publisher]]\npod = \"garbage\"\nmodel = \"hm\"\ndialect = \"seqid\"\n"
        << "topic = \"kv\"\nendpoint = \"tcp://127.0.0.1:" << gpub
        << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << grouter << "\"\n";
  }
  std::unique_ptr<Process> worker;
  int worker_life = 0;
  auto start_worker = [&] {
    worker = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", dir + "/kvidx.toml",
                                 "--worker", "0"},
        dir + "/worker" + std::to_string(worker_life++) + ".log");
  };
  start_worker();
  Process query({BuildPath("query/kvidx-query"), "--config", dir + "/kvidx.toml", "--port-file",
                 dir + "/query.port"},
                dir + "/query.log");
  auto [grpc_port, metrics_port] = PeerPorts(dir + "/query.port");
  ASSERT_GT(grpc_port, 0) << query.Log();
  auto stub = v1::KvIndex::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port),
                                                       grpc::InsecureChannelCredentials()));
  auto seg = index::Segment::AwaitAttach(segment, index::Segment::Access::kReadOnly, std::nullopt,
                                         std::chrono::milliseconds(20000));
  ASSERT_TRUE(seg.ok()) << seg.status();
  index::PrefixIndex idx(seg->get());

  auto pod_keys = [&](const std::string& pod) {
    std::set<uint64_t> keys;
    for (const auto& e : idx.Dump()) {
      const index::PublisherSlot* s = idx.publisher_slot(e.holder.publisher);
      if (s != nullptr && std::string(s->id.pod, strnlen(s->id.pod, sizeof s->id.pod)) == pod)
        keys.insert(e.key);
    }
    return keys;
  };
  std::mt19937_64 rng(1);
  std::FILE* csv = nullptr;
  if (const char* path = std::getenv("KVIDX_SOAK_CSV")) csv = std::fopen(path, "w");
  auto line = [&](const char* fmt, auto... args) {
    std::printf(fmt, args...);
    if (csv != nullptr) std::fprintf(csv, fmt, args...);
  };
  line("%s",
       "t_s,round,fault,worker_rss_mib,query_rss_mib,pairs,occupancy,lookup_p50_us,"
       "lookup_p99_us,blocks_checked,inexact\n");
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  uint64_t warm_worker = 0, warm_query = 0;
  int round = 0, inexact_rounds = 0;
  uint64_t checked = 0;
  while (elapsed() < seconds || round < 4) {
    ++round;
    // A fault, then traffic.
    std::string fault = "none";
    switch (rng() % 6) {
      case 0: {
        int e = static_cast<int>(rng() % kEngines);
        ASSERT_FALSE(engines[e]->Do("restart").empty());
        fault = "engine" + std::to_string(e) + "-restart";
        break;
      }
      case 1:
        worker->Signal(SIGKILL);
        ASSERT_NE(worker->Wait(), -1);
        start_worker();
        fault = "worker-kill";
        break;
      case 2: {
        // The garbage publisher moves to new ports: its old one is gone, the new one floods.
        std::unique_ptr<Process> old = std::move(garbage);
        old.reset();
        auto [p, r] = start_garbage(round);
        v1::RegisterPublisherRequest reg;  // admin socket: re-register at the new endpoint
        reg.set_pod("garbage");
        reg.set_model("hm");
        reg.set_dialect("seqid");
        reg.set_endpoint("tcp://127.0.0.1:" + std::to_string(p));
        reg.set_replay_endpoint("tcp://127.0.0.1:" + std::to_string(r));
        reg.set_topic("kv");
        auto admin = v1::KvIndex::NewStub(
            grpc::CreateChannel("unix:" + dir + "/admin.sock", grpc::InsecureChannelCredentials()));
        grpc::ClientContext ctx;
        v1::Pod pod;
        EXPECT_TRUE(admin->RegisterPublisher(&ctx, reg, &pod).ok());
        std::ofstream go(dir + "/garbage" + std::to_string(round) + "/go");
        fault = "garbage-flood";
        break;
      }
      default:
        break;
    }
    for (auto& e : engines) e->Send("publish 150");
    for (auto& e : engines) ASSERT_FALSE(e->Ack().empty()) << e->Log();
    // Quiescence and exactness, per engine.
    int inexact = 0;
    for (int i = 0; i < kEngines; ++i) {
      std::set<uint64_t> want = Holdings(*engines[i]), got;
      const std::string pod = "engine" + std::to_string(i);
      if (!WaitFor([&] { return (got = pod_keys(pod)) == want; },
                   std::chrono::milliseconds(30000))) {
        ++inexact;
        std::ostringstream diff;
        for (uint64_t k : got) {
          if (want.count(k) == 0) diff << " +" << std::hex << k << std::dec;
        }
        for (uint64_t k : want) {
          if (got.count(k) == 0) diff << " -" << std::hex << k << std::dec;
        }
        for (auto p : idx.ActivePublishers()) {
          const index::PublisherSlot* s = idx.publisher_slot(p);
          if (std::string(s->id.pod, strnlen(s->id.pod, sizeof s->id.pod)) != pod) continue;
          diff << "\n  pairs " << s->index.pairs << " unknown_removes " << s->index.unknown_removes
               << " duplicate_stores " << s->index.duplicate_stores << " engine_hash_conflicts "
               << s->index.engine_hash_conflicts << " orphans " << s->index.orphan_blocks
               << " unresolved " << s->index.unresolved_blocks << " rejected "
               << s->index.rejected_stores << " evicted " << s->index.evicted_pairs << " resyncs "
               << s->ingest.resyncs << " last_seq " << s->ingest.last_seq;
        }
        ADD_FAILURE() << "round " << round << " (" << fault << "): " << pod << " holds "
                      << want.size() << ", index " << got.size() << ":" << diff.str();
      }
      checked += want.size();
    }
    inexact_rounds += inexact > 0;
    // Lookup latency over gRPC: each engine's held keys as block-key queries.
    std::vector<double> us;
    for (int n = 0; n < 200; ++n) {
      v1::LookupRequest req;
      auto* q = req.add_queries();
      q->mutable_namespace_()->set_model("peer-model");
      for (uint64_t k : pod_keys("engine" + std::to_string(n % kEngines))) {
        q->mutable_block_keys()->add_keys(k);
        if (q->block_keys().keys_size() >= 32) break;
      }
      v1::LookupResponse resp;
      grpc::ClientContext ctx;
      auto a = std::chrono::steady_clock::now();
      grpc::Status st = stub->Lookup(&ctx, req, &resp);
      us.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count());
      ASSERT_TRUE(st.ok()) << st.error_message();
    }
    std::sort(us.begin(), us.end());
    v1::StatsResponse stats;
    {
      grpc::ClientContext ctx;
      ASSERT_TRUE(stub->Stats(&ctx, {}, &stats).ok());
    }
    const uint64_t wr = ProcStatusBytes(worker->pid(), "VmRSS"),
                   qr = ProcStatusBytes(query.pid(), "VmRSS");
    line("%.1f,%d,%s,%.1f,%.1f,%lu,%.4f,%.0f,%.0f,%lu,%d\n", elapsed(), round, fault.c_str(),
         wr / 1048576.0, qr / 1048576.0, static_cast<unsigned long>(stats.pairs()),
         stats.occupancy(), us[us.size() / 2], us[us.size() * 99 / 100],
         static_cast<unsigned long>(checked), inexact);
    // Warm-up: the first quarter of the run (at least 2 rounds) sets the peaks.
    if (elapsed() < seconds / 4.0 || round <= 2) {
      warm_worker = std::max(warm_worker, wr);
      warm_query = std::max(warm_query, qr);
    } else if (kRssMeaningful) {
      EXPECT_LE(wr, warm_worker + warm_worker / 4 + (16u << 20)) << "worker RSS, round " << round;
      EXPECT_LE(qr, warm_query + warm_query / 4 + (16u << 20)) << "query RSS, round " << round;
    }
  }
  if (csv != nullptr) std::fclose(csv);
  std::printf("soak: %d rounds in %.0f s, %lu engine blocks checked, %d inexact rounds\n", round,
              elapsed(), static_cast<unsigned long>(checked), inexact_rounds);
  EXPECT_EQ(inexact_rounds, 0);
  worker->Signal(SIGTERM);
  query.Signal(SIGTERM);
}

}  // namespace
}  // namespace kvidx::testing
