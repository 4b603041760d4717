// kvidx-sim -> two kvidx-ingest worker processes -> the shared-memory index, over real ZeroMQ
// TCP sockets on loopback. After the run quiesces, the index must equal the simulator's own
// record of what each pod holds, with faults injected.
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "gtest/gtest.h"

#include "control/control_area.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

using Holdings = std::map<std::pair<std::string, uint32_t>, std::set<uint64_t>>;

Holdings ReadRecord(const std::string& path) {
  Holdings h;
  std::ifstream in(path);
  std::string pod, key;
  uint32_t dp;
  while (in >> pod >> dp >> key) h[{pod, dp}].insert(std::stoull(key, nullptr, 16));
  return h;
}

Holdings ReadIndex(const std::string& segment) {
  Holdings h;
  auto seg = index::Segment::Attach(segment, index::Segment::Access::kReadOnly);
  if (!seg.ok()) return h;
  index::PrefixIndex idx(seg->get());
  for (const auto& e : idx.Dump()) {
    const index::PublisherSlot* s = idx.publisher_slot(e.holder.publisher);
    if (s != nullptr) h[{s->id.pod, s->id.dp_rank}].insert(e.key);
  }
  return h;
}

std::string Describe(const Holdings& want, const Holdings& got) {
  std::ostringstream out;
  std::set<std::pair<std::string, uint32_t>> pubs;
  for (auto& [k, v] : want) pubs.insert(k);
  for (auto& [k, v] : got) pubs.insert(k);
  for (auto& p : pubs) {
    auto w = want.count(p) ? want.at(p) : std::set<uint64_t>();
    auto g = got.count(p) ? got.at(p) : std::set<uint64_t>();
    size_t missing = 0, extra = 0;
    for (auto k : w) missing += !g.count(k);
    for (auto k : g) extra += !w.count(k);
    out << p.first << "/" << p.second << ": sim " << w.size() << " index " << g.size()
        << " missing " << missing << " extra " << extra << "\n";
  }
  return out.str();
}

struct TestRun {
  std::string name;
  std::string dir;
  std::string segment;
  std::string config;
  std::string record;
};

TestRun Prepare(const std::string& name) {
  TestRun r;
  r.name = name;
  r.dir = "/tmp/kvidx-e2e-" + name + "-" + std::to_string(getpid());
  mkdir(r.dir.c_str(), 0755);
  r.segment = "kvidx-e2e-" + name + "-" + std::to_string(getpid());
  r.config = r.dir + "/kvidx.toml";
  r.record = r.dir + "/record.txt";
  index::Segment::Remove(r.segment);
  control::ControlArea::Remove(control::ControlName(r.segment));
  return r;
}

void WriteConfig(const TestRun& r, const std::string& sim_config) {
  std::ifstream in(sim_config);
  std::stringstream ss;
  ss << in.rdbuf();
  std::ofstream out(r.config);
  out << "[segment]\nname = \"" << r.segment
      << "\"\nblocks = 200000\npairs = 800000\npublishers = 64\nnamespaces = 8\nstripes = 64\n"
      << "[ingest]\nworkers = 2\nreplay_timeout_ms = 1500\nreconnect_initial_ms = 100\n"
      << "reconnect_max_ms = 1000\n\n"
      << ss.str();
}

// Waits for the simulator's configuration, then writes the workers' from it.
bool WriteConfigFromSim(const TestRun& r) {
  if (!WaitFor([&] { return access((r.dir + "/sim.toml").c_str(), R_OK) == 0; },
               std::chrono::milliseconds(5000))) {
    return false;
  }
  WriteConfig(r, r.dir + "/sim.toml");
  return true;
}

std::unique_ptr<Process> StartWorker(const TestRun& r, int k) {
  return std::make_unique<Process>(
      std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", r.config, "--worker",
                               std::to_string(k)},
      r.dir + "/worker" + std::to_string(k) + ".log");
}

std::unique_ptr<Process> StartSim(const TestRun& r, std::vector<std::string> extra) {
  std::vector<std::string> args = {BuildPath("tools/kvidx-sim"),
                                   "--base-port",
                                   "0",
                                   "--config-out",
                                   r.dir + "/sim.toml",
                                   "--record",
                                   r.record,
                                   "--start-delay-ms",
                                   "300",
                                   "--linger-ms",
                                   "4000"};
  args.insert(args.end(), extra.begin(), extra.end());
  return std::make_unique<Process>(args, r.dir + "/sim.log");
}

void ExpectIndexEqualsRecord(const TestRun& r, Process& sim) {
  ASSERT_EQ(sim.Wait(std::chrono::milliseconds(90000)), 0) << sim.Log();
  Holdings want = ReadRecord(r.record);
  ASSERT_FALSE(want.empty());
  Holdings got;
  bool same = WaitFor([&] { return (got = ReadIndex(r.segment)) == want; },
                      std::chrono::milliseconds(10000));
  std::string counters;
  if (!same) {
    auto seg = index::Segment::Attach(r.segment, index::Segment::Access::kReadOnly);
    if (seg.ok()) {
      index::PrefixIndex idx(seg->get());
      for (auto p : idx.ActivePublishers()) {
        const index::PublisherSlot* s = idx.publisher_slot(p);
        counters += std::string(s->id.pod) + ": batches " + std::to_string(s->ingest.batches) +
                    " stored " + std::to_string(s->index.stored_blocks) + " removed " +
                    std::to_string(s->index.removed_blocks) + " orphans " +
                    std::to_string(s->index.orphan_blocks) + " unknown_removes " +
                    std::to_string(s->index.unknown_removes) + " dups " +
                    std::to_string(s->index.duplicate_stores) + " evicted " +
                    std::to_string(s->index.evicted_pairs) + " decode_errors " +
                    std::to_string(s->ingest.decode_errors) + " gaps " +
                    std::to_string(s->ingest.gaps) + " resyncs " +
                    std::to_string(s->ingest.resyncs) + "\n";
      }
    }
  }
  EXPECT_TRUE(same) << Describe(want, got) << counters;
}

const index::SegmentHeader* Header(const std::unique_ptr<index::Segment>& s) { return s->header(); }

TEST(IngestE2eTest, EveryEncodingThroughTwoWorkersEqualsTheSimulator) {
  TestRun r = Prepare("clean");
  auto sim = StartSim(r, {"--pods", "8", "--mixed-encodings", "--requests", "600", "--rate", "400",
                          "--cache-blocks", "400"});
  ASSERT_TRUE(WriteConfigFromSim(r));
  auto w0 = StartWorker(r, 0);
  auto w1 = StartWorker(r, 1);
  ExpectIndexEqualsRecord(r, *sim);
  auto seg = index::Segment::Attach(r.segment, index::Segment::Access::kReadOnly);
  ASSERT_TRUE(seg.ok());
  index::PrefixIndex idx(seg->get());
  EXPECT_EQ(idx.ActivePublishers().size(), 8u);
  EXPECT_GT(Header(*seg)->ingest.batches_applied, 500u);
  uint64_t decode_errors = 0;
  for (uint64_t v : Header(*seg)->ingest.decode_errors) decode_errors += v;
  EXPECT_EQ(decode_errors, 0u);
  w0->Signal(SIGTERM);
  w1->Signal(SIGTERM);
  EXPECT_EQ(w0->Wait(), 0);
  EXPECT_EQ(w1->Wait(), 0);
  index::Segment::Remove(r.segment);
  control::ControlArea::Remove(control::ControlName(r.segment));
}

// The Mooncake conversation trace (../shared/traces) replayed over simulated pods with LRU caches.
TEST(IngestE2eTest, MooncakeTraceEqualsTheSimulator) {
  std::string trace =
      std::string(KVIDX_SOURCE_ROOT) + "/../shared/traces/mooncake_conversation_trace.jsonl";
  ASSERT_EQ(access(trace.c_str(), R_OK), 0) << trace;
  TestRun r = Prepare("trace");
  auto sim =
      StartSim(r, {"--pods", "4", "--workload", "trace", "--trace", trace, "--requests", "400",
                   "--rate", "300", "--cache-blocks", "1500", "--encoding", "vllm-map"});
  ASSERT_TRUE(WriteConfigFromSim(r));
  auto w0 = StartWorker(r, 0);
  auto w1 = StartWorker(r, 1);
  ExpectIndexEqualsRecord(r, *sim);
  auto seg = index::Segment::Attach(r.segment, index::Segment::Access::kReadOnly);
  ASSERT_TRUE(seg.ok());
  index::PrefixIndex idx(seg->get());
  EXPECT_GT(idx.Stats().blocks, 1000u);
  w0->Signal(SIGTERM);
  w1->Signal(SIGTERM);
  w0->Wait();
  w1->Wait();
  index::Segment::Remove(r.segment);
  control::ControlArea::Remove(control::ControlName(r.segment));
}

// Lost batches, engine restarts, garbage frames and a worker killed twice, for a vLLM era, the
// sequence-id form (whose tables a killed worker rebuilds from the replay) and KVBM (whose
// restarted engine comes back as a new instance).
class FaultsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FaultsTest, GapsRestartsGarbageAndAKilledWorkerStillEndEqual) {
  TestRun r = Prepare("faults-" + GetParam());
  auto sim = StartSim(r, {"--pods", "4", "--requests", "1200", "--rate", "300", "--cache-blocks",
                          "300", "--drop-every", "23", "--restart-every", "400", "--garbage-every",
                          "31", "--replay-without-topic", "--encoding", GetParam()});
  ASSERT_TRUE(WriteConfigFromSim(r));
  auto w0 = StartWorker(r, 0);
  auto w1 = StartWorker(r, 1);
  // Kill worker 0 (SIGKILL, mid-stream) twice, each time once the workers have applied
  // another 150 batches since it started, and start it again at once.
  int kills = getenv("KVIDX_E2E_KILLS") ? atoi(getenv("KVIDX_E2E_KILLS")) : 2;
  for (int i = 0; i < kills; ++i) {
    uint64_t base = 0;
    auto applied = [&]() -> uint64_t {
      auto seg = index::Segment::Attach(r.segment, index::Segment::Access::kReadOnly);
      return seg.ok() ? Header(*seg)->ingest.batches_applied : 0;
    };
    base = applied();
    ASSERT_TRUE(WaitFor([&] { return applied() >= base + 150; }, std::chrono::seconds(60)))
        << "the workers applied nothing more; sim: " << sim->Log();
    w0->Signal(SIGKILL);
    EXPECT_NE(w0->Wait(), -1);
    w0 = StartWorker(r, 0);
  }
  ExpectIndexEqualsRecord(r, *sim);
  auto seg = index::Segment::Attach(r.segment, index::Segment::Access::kReadOnly);
  ASSERT_TRUE(seg.ok());
  index::PrefixIndex idx(seg->get());
  uint64_t gaps = 0, resyncs = 0, replays = 0;
  for (auto p : idx.ActivePublishers()) {
    gaps += idx.publisher_slot(p)->ingest.gaps;
    resyncs += idx.publisher_slot(p)->ingest.resyncs;
    replays += idx.publisher_slot(p)->ingest.replays;
  }
  EXPECT_GT(gaps, 0u);
  EXPECT_GT(replays, gaps / 2);
  EXPECT_GT(resyncs, 0u);  // the engine restarts
  EXPECT_GT(Header(*seg)->ingest.garbage_frames, 0u);
  w0->Signal(SIGTERM);
  w1->Signal(SIGTERM);
  w0->Wait();
  w1->Wait();
  index::Segment::Remove(r.segment);
  control::ControlArea::Remove(control::ControlName(r.segment));
}

INSTANTIATE_TEST_SUITE_P(Encodings, FaultsTest, ::testing::Values("vllm-array", "seqid", "kvbm"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           n.erase(std::remove(n.begin(), n.end(), '-'), n.end());
                           return n;
                         });

}  // namespace
}  // namespace kvidx::testing
