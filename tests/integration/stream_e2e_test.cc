// End to end with real processes against an engine publisher written apart from kvidx
// (tests/integration/engine_peer.py: PUB + ROUTER with a bounded replay ring, an LRU block
// cache, 5 % of live batches lost): a kvidx-ingest worker SIGKILLed mid-stream, engine restarts
// with the worker up and with it down across the restart (the new engine then past the old
// sequence), and an endpoint change (the pod moves; the worker is told by SIGHUP). After each
// scenario quiesces, every block the engine holds is in the index and nothing else is: 0 over-
// and 0 under-reported blocks, for every seed. The resyncs must be exactly the forced ones.
//
// KVIDX_STREAM_E2E_SEEDS=N sets the number of seeds (default 20).
#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

#include "gtest/gtest.h"

#include "control/control_area.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "tests/integration/engine_peer.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

struct Counts {
  uint64_t resyncs = 0, restarts = 0, unverifiable = 0, gaps = 0, probes = 0;
};

class StreamE2e {
 public:
  StreamE2e(uint64_t seed) : seed_(seed) {
    dir_ = "/tmp/kvidx-stream-e2e-" + std::to_string(getpid()) + "-" + std::to_string(seed);
    mkdir(dir_.c_str(), 0755);
    segment_ = "kvidx-stream-e2e-" + std::to_string(getpid()) + "-" + std::to_string(seed);
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
  }
  ~StreamE2e() {
    worker_.reset();
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
  }

  void WriteConfig(const std::string& ports) {
    std::istringstream in(ports);
    int pub = 0, router = 0;
    in >> pub >> router;
    std::ofstream cfg(dir_ + "/kvidx.toml.tmp");
    cfg << "[segment]\nname = \"" << segment_
        << "\"\nblocks = 40000\npairs = 80000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 500\nreconnect_initial_ms = 50\n"
        << "reconnect_max_ms = 200\nidle_probe_ms = 300\n"
        << "[[model]]\nname = \"peer-model\"\nblock_size = 4\n"
        << "[[publisher]]\npod = \"engine\"\nmodel = \"peer-model\"\ndialect = \"vllm\"\n"
        << "topic = \"kv\"\nendpoint = \"tcp://127.0.0.1:" << pub
        << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << router << "\"\n";
    cfg.close();
    std::rename((dir_ + "/kvidx.toml.tmp").c_str(), (dir_ + "/kvidx.toml").c_str());
  }
  void StartWorker() {
    worker_ = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", dir_ + "/kvidx.toml",
                                 "--worker", "0"},
        dir_ + "/worker.log");
  }
  void SignalWorker(int sig) { worker_->Signal(sig); }
  void KillWorker() {
    worker_->Signal(SIGKILL);
    ASSERT_NE(worker_->Wait(), -1);
  }

  std::set<uint64_t> IndexKeys() {
    std::set<uint64_t> keys;
    auto seg = index::Segment::Attach(segment_, index::Segment::Access::kReadOnly);
    if (!seg.ok()) return keys;
    index::PrefixIndex idx(seg->get());
    for (const auto& e : idx.Dump()) keys.insert(e.key);
    return keys;
  }
  Counts Read() {
    Counts c;
    auto seg = index::Segment::Attach(segment_, index::Segment::Access::kReadOnly);
    if (!seg.ok()) return c;
    index::PrefixIndex idx(seg->get());
    for (auto p : idx.ActivePublishers()) {
      const index::PublisherSlot* s = idx.publisher_slot(p);
      c.resyncs += s->ingest.resyncs;
      c.restarts += s->ingest.restarts;
      c.unverifiable += s->ingest.unverifiable_gaps;
      c.gaps += s->ingest.gaps;
      c.probes += s->ingest.probes;
    }
    return c;
  }

  // Waits until the index holds exactly the engine's blocks; describes the difference if not.
  std::string ExpectExact(Engine& engine, const std::string& when) {
    std::string ack = engine.Do("holdings");
    std::set<uint64_t> want;
    std::istringstream in(ack);
    std::string k;
    while (in >> k) {
      if (k != "ok") want.insert(std::stoull(k, nullptr, 16));
    }
    std::set<uint64_t> got;
    if (want.size() < 20)
      return "seed " + std::to_string(seed_) + " " + when + ": engine holds too few blocks";
    if (WaitFor([&] { return (got = IndexKeys()) == want; }, std::chrono::milliseconds(20000))) {
      checked_blocks_ += want.size();
      return "";
    }
    size_t over = 0, under = 0;
    std::ostringstream keys;  // the first few differing keys, for the diagnosis
    for (auto key : got) {
      if (want.count(key) == 0 && over++ < 4) keys << " +" << std::hex << key << std::dec;
    }
    for (auto key : want) {
      if (got.count(key) == 0 && under++ < 4) keys << " -" << std::hex << key << std::dec;
    }
    std::ostringstream os;
    os << "seed " << seed_ << " " << when << ": engine holds " << want.size() << ", index "
       << got.size() << ": " << over << " over-reported, " << under << " under-reported;"
       << keys.str() << "\n"
       << "worker log:\n"
       << (worker_ ? worker_->Log() : "");
    return os.str();
  }

  const std::string& dir() const { return dir_; }
  uint64_t checked_blocks() const { return checked_blocks_; }

 private:
  uint64_t seed_;
  std::string dir_, segment_;
  std::unique_ptr<Process> worker_;
  uint64_t checked_blocks_ = 0;
};

TEST(StreamE2eTest, EngineRestartsWorkerKillsAndMovesEndExactOverManySeeds) {
  const char* env = std::getenv("KVIDX_STREAM_E2E_SEEDS");
  const uint64_t seeds = env != nullptr ? std::strtoull(env, nullptr, 10) : 20;
  Counts total;
  uint64_t lost = 0;  // live batches the engine lost on purpose (replays made them whole)
  for (uint64_t seed = 1; seed <= seeds; ++seed) {
    StreamE2e t(seed);
    Engine engine(t.dir(), seed);
    std::string ports = WaitForFile(t.dir() + "/ports", std::chrono::milliseconds(30000));
    ASSERT_FALSE(ports.empty()) << engine.Log();
    t.WriteConfig(ports);
    t.StartWorker();
    ASSERT_EQ(engine.Do("publish 60"), "ok\n") << engine.Log();
    ASSERT_EQ(t.ExpectExact(engine, "after 60 batches with 5 % lost"), "");

    // The worker is SIGKILLed while the engine publishes, and started again.
    engine.Send("publish 40");
    t.KillWorker();
    ASSERT_EQ(engine.Ack(), "ok\n");
    t.StartWorker();
    ASSERT_EQ(engine.Do("publish 20"), "ok\n");
    ASSERT_EQ(t.ExpectExact(engine, "after a worker SIGKILL"), "");

    // The engine restarts with the worker up.
    ASSERT_FALSE(engine.Do("restart").empty());
    ASSERT_EQ(engine.Do("publish 30"), "ok\n");
    ASSERT_EQ(t.ExpectExact(engine, "after an engine restart"), "");

    // The engine restarts while the worker is down, and goes past the old sequence.
    t.KillWorker();
    ASSERT_FALSE(engine.Do("restart").empty());
    ASSERT_EQ(engine.Do("publish 70"), "ok\n");
    t.StartWorker();
    ASSERT_EQ(engine.Do("publish 5"), "ok\n");
    ASSERT_EQ(t.ExpectExact(engine, "after a restart with the worker down"), "");

    // The pod moves: a new engine on new ports; the worker rereads its configuration.
    std::string moved = engine.Do("move");
    ASSERT_FALSE(moved.empty());
    t.WriteConfig(moved);
    ASSERT_EQ(engine.Do("publish 30"), "ok\n");
    // (SIGHUP after the new engine has published: its first batches are only in its ring.)
    t.SignalWorker(SIGHUP);
    ASSERT_EQ(engine.Do("publish 10"), "ok\n");
    ASSERT_EQ(t.ExpectExact(engine, "after an endpoint change"), "");

    Counts c = t.Read();
    std::printf(
        "seed %lu: %lu blocks compared exactly; resyncs %lu (restarts detected %lu, "
        "unverifiable %lu), gaps %lu, idle probes %lu\n",
        static_cast<unsigned long>(seed), static_cast<unsigned long>(t.checked_blocks()),
        static_cast<unsigned long>(c.resyncs), static_cast<unsigned long>(c.restarts),
        static_cast<unsigned long>(c.unverifiable), static_cast<unsigned long>(c.gaps),
        static_cast<unsigned long>(c.probes));
    // Forced: two restarts and the move, each a new engine whose blocks are not the old one's.
    EXPECT_EQ(c.resyncs, 3u) << "seed " << seed;
    EXPECT_EQ(c.unverifiable, 0u) << "seed " << seed;
    total.resyncs += c.resyncs;
    total.restarts += c.restarts;
    total.unverifiable += c.unverifiable;
    total.gaps += c.gaps;
    lost += std::stoull(engine.Do("lost"));
    engine.Do("quit");
  }
  std::printf("%lu seeds: resyncs %lu (forced: %lu), unverifiable gaps %lu, gaps %lu\n",
              static_cast<unsigned long>(seeds), static_cast<unsigned long>(total.resyncs),
              static_cast<unsigned long>(3 * seeds), static_cast<unsigned long>(total.unverifiable),
              static_cast<unsigned long>(total.gaps));
  std::printf("live batches lost by the engine: %lu\n", static_cast<unsigned long>(lost));
  EXPECT_GT(lost, 20u) << "the scenario must lose batches, or it tests no recovery";
}

}  // namespace
}  // namespace kvidx::testing
