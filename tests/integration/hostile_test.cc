// Issue 11: bounded memory under a hostile publisher. One kvidx-ingest worker serves an honest
// engine (tests/integration/engine_peer.py) and a hostile sequence-id publisher
// (tests/integration/hostile_peer.py) that floods it: hundreds of thousands of finished
// requests, sequences that are never removed, garbage frames, a payload past the limit, an
// array header claiming a million events. The worker's resident set may grow by no more than
// its budgets allow; the hostile publisher's excess is refused and counted; the honest engine's
// blocks stay exact throughout.
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

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kQueueBytes = 4 * kMiB, kReplayBytes = 4 * kMiB, kSequenceBytes = 2 * kMiB;

class HostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/kvidx-hostile-" + std::to_string(getpid());
    mkdir(dir_.c_str(), 0755);
    for (const char* f : {"/go", "/done", "/ports"}) unlink((dir_ + f).c_str());
    segment_ = "kvidx-hostile-" + std::to_string(getpid());
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
    mkdir((dir_ + "/engine").c_str(), 0755);
    engine_ = std::make_unique<Engine>(dir_ + "/engine", 7);
  }
  void TearDown() override {
    worker_.reset();
    hostile_.reset();
    engine_.reset();
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
  }

  std::string dir_, segment_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Process> hostile_, worker_;
};

struct Slots {
  const index::PublisherSlot* honest = nullptr;
  const index::PublisherSlot* hostile = nullptr;
};

TEST_F(HostileTest, AFloodingPublisherStaysWithinItsBudgetsAndTheHonestOneStaysExact) {
  // The engine peer writes its ports to its own directory once it is up.
  auto [epub, erouter] = PeerPorts(dir_ + "/engine/ports");
  hostile_ = std::make_unique<Process>(
      std::vector<std::string>{
          "/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/hostile_peer.py",
          dir_},
      dir_ + "/hostile.log");
  auto [hpub, hrouter] = PeerPorts(dir_ + "/ports");
  ASSERT_GT(epub, 0) << engine_->Log();
  ASSERT_GT(hpub, 0) << hostile_->Log();
  {
    std::ofstream cfg(dir_ + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment_
        << "\"\nblocks = 400000\npairs = 800000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 500\nreconnect_initial_ms = 50\n"
        << "reconnect_max_ms = 200\nidle_probe_ms = 300\nmax_payload_bytes = 1048576\n"
        << "queue_bytes = " << kQueueBytes << "\nreplay_buffer_bytes = " << kReplayBytes
        << "\nsequence_table_bytes = " << kSequenceBytes << "\n"
        << "[[model]]\nname = \"peer-model\"\nblock_size = 4\n"
        << "[[model]]\nname = \"hm\"\nblock_size = 4\n"
        << "[[publisher]]\npod = \"engine\"\nmodel = \"peer-model\"\ndialect = \"vllm\"\n"
        << "topic = \"kv\"\nendpoint = \"tcp://127.0.0.1:" << epub
        << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << erouter << "\"\n"
        << "[[publisher]]\npod = \"hostile\"\nmodel = \"hm\"\ndialect = \"seqid\"\n"
        << "topic = \"kv\"\nendpoint = \"tcp://127.0.0.1:" << hpub
        << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << hrouter << "\"\n";
  }
  worker_ = std::make_unique<Process>(
      std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", dir_ + "/kvidx.toml",
                               "--worker", "0"},
      dir_ + "/worker.log");
  std::unique_ptr<index::Segment> seg;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto s = index::Segment::Attach(segment_, index::Segment::Access::kReadOnly);
        if (!s.ok()) return false;
        seg = std::move(*s);
        return true;
      },
      std::chrono::milliseconds(20000)))
      << worker_->Log();
  index::PrefixIndex idx(seg.get());
  auto slots = [&] {
    Slots s;
    for (auto p : idx.ActivePublishers()) {
      const index::PublisherSlot* slot = idx.publisher_slot(p);
      std::string pod(slot->id.pod, strnlen(slot->id.pod, sizeof slot->id.pod));
      (pod == "engine" ? s.honest : s.hostile) = slot;
    }
    return s;
  };
  ASSERT_TRUE(
      WaitFor([&] { return slots().honest && slots().hostile; }, std::chrono::milliseconds(20000)));
  // The honest engine's blocks, exactly: every key it holds, and nothing else of its pod.
  auto honest_keys = [&] {
    std::set<uint64_t> keys;
    const index::PublisherSlot* h = slots().honest;
    for (const auto& e : idx.Dump()) {
      if (idx.publisher_slot(e.holder.publisher) == h) keys.insert(e.key);
    }
    return keys;
  };
  auto expect_exact = [&](const std::string& when) {
    std::set<uint64_t> want;
    std::istringstream in(engine_->Do("holdings"));
    std::string k;
    while (in >> k) {
      if (k != "ok") want.insert(std::stoull(k, nullptr, 16));
    }
    ASSERT_GT(want.size(), 20u) << when;
    std::set<uint64_t> got;
    EXPECT_TRUE(
        WaitFor([&] { return (got = honest_keys()) == want; }, std::chrono::milliseconds(30000)))
        << when << ": engine holds " << want.size() << ", index " << got.size() << "\n"
        << worker_->Log();
  };
  ASSERT_FALSE(engine_->Do("publish 300").empty()) << engine_->Log();
  expect_exact("before the flood");
  const uint64_t rss_before = ProcStatusBytes(worker_->pid(), "VmRSS");
  ASSERT_GT(rss_before, 0u);

  { std::ofstream go(dir_ + "/go"); }
  // The honest engine keeps publishing while the flood runs.
  engine_->Send("publish 300");
  std::string done = WaitForFile(dir_ + "/done", std::chrono::milliseconds(240000));
  ASSERT_FALSE(done.empty()) << hostile_->Log();
  ASSERT_FALSE(engine_->Ack().empty()) << engine_->Log();
  const uint64_t last = std::stoull(done);
  // Quiescence: the worker has taken the hostile stream up to its last batch. Meanwhile the
  // budget figures are sampled: they may never exceed their budgets.
  uint64_t max_sequence_bytes = 0, max_buffered_bytes = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        const index::PublisherSlot* h = slots().hostile;
        max_sequence_bytes = std::max<uint64_t>(max_sequence_bytes, h->ingest.sequence_bytes);
        max_buffered_bytes = std::max<uint64_t>(max_buffered_bytes, h->ingest.buffered_bytes);
        return h->ingest.has_seq && h->ingest.last_seq == last && !h->ingest.gap_open;
      },
      std::chrono::milliseconds(120000)))
      << "hostile stream at " << slots().hostile->ingest.last_seq << " of " << last << "\n"
      << worker_->Log();
  expect_exact("after the flood");

  const index::PublisherSlot* h = slots().hostile;
  // The sequence table filled up to its budget and refused the rest, counted. (The batch past
  // max_payload_bytes is lost for good, so the worker resynced the publisher after it, and the
  // table is empty now.)
  EXPECT_LE(max_sequence_bytes, kSequenceBytes);
  EXPECT_LE(max_buffered_bytes, kReplayBytes);
  EXPECT_GT(h->ingest.budget_drops, 0u);
  EXPECT_EQ(h->ingest.budget_bytes, kQueueBytes + kReplayBytes + kSequenceBytes);
  EXPECT_GE(h->ingest.unverifiable_gaps, 1u);
  // The garbage was refused and counted: malformed payloads, bad frames.
  EXPECT_GT(h->ingest.decode_errors, 0u);
  // The worker's peak resident set grew by at most its budgets (both sockets' queues, the
  // replay buffer, the sequence table) plus one decoded batch of each publisher; before the
  // table was bounded, the finished requests alone cost ~100 MiB.
  const uint64_t peak = ProcStatusBytes(worker_->pid(), "VmHWM");
  const uint64_t bound = 2 * kQueueBytes + kReplayBytes + kSequenceBytes + 24 * kMiB;
  std::printf("worker RSS before the flood %.1f MiB, peak %.1f MiB, now %.1f MiB (bound +%.1f)\n",
              rss_before / double(kMiB), peak / double(kMiB),
              ProcStatusBytes(worker_->pid(), "VmRSS") / double(kMiB), bound / double(kMiB));
  if (kRssMeaningful) {
    EXPECT_LE(peak, rss_before + bound) << worker_->Log();
  }
  // And the honest engine is still followed exactly after more traffic.
  ASSERT_FALSE(engine_->Do("publish 200").empty());
  expect_exact("after more traffic");
}

}  // namespace
}  // namespace kvidx::testing
