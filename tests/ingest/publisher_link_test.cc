// PublisherLink against an engine played by the test over real ZeroMQ sockets on loopback (free
// ports, port 0): gaps, replays in both layouts, replays that cannot cover a gap, lost end
// markers, engine restarts with and without the worker down across them, endpoint changes, an
// unreachable engine, garbage frames, the publisher-connects (bind) mode — and one regression
// test per way the stream used to lose a pod or keep a dead engine's blocks (issue 8: a-d).
// Every wait is for an event, with a deadline; nothing depends on how long a sleep is.
#include "ingest/publisher_link.h"

#include <unistd.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>

#include "gtest/gtest.h"

#include <zmq_addon.hpp>

#include "shared/clock.h"
#include "tests/common/children.h"
#include "tests/index/test_util.h"
#include "tools/sim/encoder.h"

namespace kvidx::ingest {
namespace {

// One stored block per batch: hash 1000 + seq + life * 100000, tokens {seq, life}: a restarted
// engine's batch at the same sequence stores another block.
std::vector<uint8_t> Batch(uint64_t seq, uint32_t life) {
  sim::BatchContent c;
  c.runs.push_back(sim::StoredRun{
      {1000 + seq + uint64_t{life} * 100000}, 0, {static_cast<uint32_t>(seq), life}});
  return sim::EncodeBatch(sim::Encoding::kVllmArray, 1.0 + static_cast<double>(seq), 2, c);
}

zmq::message_t Seq8(uint64_t s) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(s >> (56 - 8 * i));
  return zmq::message_t(b, 8);
}

// An engine: PUB + ROUTER with a bounded replay ring, on free ports or on given endpoints (a
// restarted engine process binds the ports its predecessor had).
class TestEngine {
 public:
  TestEngine(zmq::context_t& ctx, uint32_t life = 0, std::string pub_ep = "tcp://127.0.0.1:*",
             std::string router_ep = "tcp://127.0.0.1:*", bool pub_connects = false)
      : life_(life), pub_(ctx, zmq::socket_type::pub), router_(ctx, zmq::socket_type::router) {
    pub_.set(zmq::sockopt::linger, 0);
    router_.set(zmq::sockopt::linger, 0);
    if (pub_connects) {
      pub_.connect(pub_ep);
      pub_endpoint_ = pub_ep;
    } else {
      pub_endpoint_ = BindRetrying(pub_, pub_ep);
    }
    if (!router_ep.empty()) router_endpoint_ = BindRetrying(router_, router_ep);
  }
  const std::string& pub_endpoint() const { return pub_endpoint_; }
  const std::string& router_endpoint() const { return router_endpoint_; }
  uint32_t life() const { return life_; }

  // Publishes batch `seq` of this life: kept in the ring; sent live unless lost, or held back
  // to be sent by ReleaseHeld().
  void Publish(uint64_t seq, bool lose = false, bool hold = false) {
    auto payload = Batch(seq, life_);
    ring_[seq] = payload;
    while (ring_.size() > ring_cap) ring_.erase(ring_.begin());
    if (lose) return;
    if (hold) {
      held_.push_back(seq);
      return;
    }
    SendLive(seq, payload);
  }
  // Publishes `payload` as batch `seq` (kept in the ring, sent live).
  void PublishPayload(uint64_t seq, std::vector<uint8_t> payload) {
    ring_[seq] = payload;
    SendLive(seq, payload);
  }
  void ReleaseHeld() {
    for (uint64_t s : held_) SendLive(s, Batch(s, life_));
    held_.clear();
  }
  void SendRaw(std::vector<std::string> frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      pub_.send(zmq::buffer(frames[i]),
                i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  // Takes replay requests off the ROUTER; answers them unless `hold_requests` (then they wait
  // in `pending` for AnswerPending()).
  void Serve() {
    std::vector<zmq::message_t> req;
    while (zmq::recv_multipart(router_, std::back_inserter(req), zmq::recv_flags::dontwait)) {
      ++requests;
      uint64_t start = 0;
      if (req.size() == 3)
        for (size_t i = 0; i < req[2].size(); ++i) start = (start << 8) | req[2].data<uint8_t>()[i];
      pending_.emplace_back(std::string(req[0].data<char>(), req[0].size()), start);
      req.clear();
    }
    if (!hold_requests) AnswerPending();
  }
  void AnswerPending() {
    for (auto& [id, start] : pending_) {
      for (auto& [s, payload] : ring_) {
        if (s >= start) Reply(id, s, payload);
      }
      if (send_end) Reply(id, kReplayEndSeq, {});
    }
    pending_.clear();
  }
  size_t pending() const { return pending_.size(); }

  bool with_topic = true;
  bool send_end = true;
  bool hold_requests = false;
  size_t ring_cap = 100000;
  int requests = 0;

 private:
  static std::string BindRetrying(zmq::socket_t& s, const std::string& ep) {
    // A restarted engine rebinds its predecessor's port; the old listener closes
    // asynchronously: wait (with a deadline) until the port is free.
    bool bound = kvidx::testing::WaitFor(
        [&] {
          try {
            s.bind(ep);
            return true;
          } catch (const zmq::error_t& e) {
            if (e.num() != EADDRINUSE) throw;
            return false;
          }
        },
        std::chrono::milliseconds(10000));
    if (!bound) throw std::runtime_error("cannot bind " + ep);
    return s.get(zmq::sockopt::last_endpoint);
  }
  void SendLive(uint64_t seq, const std::vector<uint8_t>& payload) {
    pub_.send(zmq::str_buffer("t"), zmq::send_flags::sndmore);
    pub_.send(Seq8(seq), zmq::send_flags::sndmore);
    pub_.send(zmq::buffer(payload));
  }
  void Reply(const std::string& id, uint64_t s, const std::vector<uint8_t>& payload) {
    router_.send(zmq::buffer(id), zmq::send_flags::sndmore);
    router_.send(zmq::message_t(), zmq::send_flags::sndmore);
    if (with_topic) router_.send(zmq::str_buffer("t"), zmq::send_flags::sndmore);
    router_.send(Seq8(s), zmq::send_flags::sndmore);
    router_.send(zmq::buffer(payload));
  }
  uint32_t life_;
  zmq::socket_t pub_;
  zmq::socket_t router_;
  std::string pub_endpoint_, router_endpoint_;
  std::map<uint64_t, std::vector<uint8_t>> ring_;
  std::vector<uint64_t> held_;
  std::deque<std::pair<std::string, uint64_t>> pending_;
};

class PublisherLinkTest : public ::testing::Test {
 protected:
  PublisherLinkTest() : seg_("link"), ctx_(1) {
    ns_ = *idx().RegisterNamespace({.model = "m", .block_size = 2});
    pub_ = *idx().RegisterPublisher({.pod = "p", .ns = ns_});
    applier_ = std::make_unique<Applier>(&idx(), ApplierConfig{});
  }
  LinkOptions Options() {
    LinkOptions o;
    o.replay_timeout_ms = 300;
    o.reconnect_initial_ms = 20;
    o.reconnect_max_ms = 100;
    o.idle_probe_ms = 200;
    o.unreachable_after_ms = 0;
    o.drop_after_ms = 0;
    return o;
  }
  std::unique_ptr<PublisherLink> MakeLink(const std::string& pub_ep, const std::string& router_ep,
                                          LinkOptions o, bool bind = false,
                                          Dialect dialect = Dialect::kAuto) {
    PublisherConfig pc;
    pc.dialect = dialect;
    pc.pod = "p";
    pc.endpoint = pub_ep;
    pc.replay_endpoint = router_ep;
    pc.bind = bind;
    auto link = std::make_unique<PublisherLink>(ctx_, &idx(), applier_.get(), pub_, pc, o);
    EXPECT_TRUE(link->Start().ok());
    return link;
  }
  std::unique_ptr<PublisherLink> MakeLink(TestEngine& e) {
    return MakeLink(e.pub_endpoint(), e.router_endpoint(), Options());
  }
  // Drives the link and the engine until `cond` holds; false after the deadline.
  bool PumpUntil(PublisherLink& link, TestEngine* engine, const std::function<bool()>& cond,
                 std::chrono::milliseconds deadline = std::chrono::milliseconds(15000)) {
    auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
      std::vector<zmq::pollitem_t> items;
      link.AppendPollItems(&items);
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds(2));
      link.Handle(items.data());
      link.Tick(MonotonicNanos());
      if (engine != nullptr) engine->Serve();
      if (cond()) return true;
    }
    return false;
  }
  // Pumps until the link streams with nothing outstanding and has applied through `seq`.
  bool PumpUntilApplied(PublisherLink& link, TestEngine& engine, uint64_t seq) {
    return PumpUntil(link, &engine, [&] {
      return slot().ingest.has_seq && slot().ingest.last_seq == seq && !link.replaying() &&
             link.machine()->state() == StreamState::kStreaming;
    });
  }
  // Publishes batches from `*next` on until one arrives live (the subscription has reached the
  // engine: before that, PUB drops what it sends) and all are applied. Tests that need a
  // live batch to arrive live start from here.
  void WarmUp(PublisherLink& link, TestEngine& engine, uint64_t* next) {
    uint64_t live = link.machine()->counters().live;
    ASSERT_TRUE(PumpUntil(link, &engine, [&] {
      if (link.machine()->counters().live > live) return true;
      engine.Publish((*next)++);
      return false;
    }));
    ASSERT_TRUE(PumpUntilApplied(link, engine, *next - 1));
  }
  bool Holds(uint64_t seq, uint32_t life = 0) {
    auto keys = *idx().KeysForTokens(ns_, std::vector<uint32_t>{static_cast<uint32_t>(seq), life});
    return !idx().Holders(keys[0]).empty();
  }
  // Every block of life `life` from `from` through `to`, and nothing else.
  ::testing::AssertionResult HoldsExactly(uint32_t life, uint64_t from, uint64_t to) {
    for (uint64_t s = from; s <= to; ++s) {
      if (!Holds(s, life)) return ::testing::AssertionFailure() << "missing " << life << ":" << s;
    }
    uint64_t pairs = idx().Dump().size();
    if (pairs != to - from + 1)
      return ::testing::AssertionFailure() << pairs << " pairs, want " << to - from + 1;
    return ::testing::AssertionSuccess();
  }
  // The engine process stops; it comes back on the ports it had, as life `life`.
  struct Endpoints {
    std::string pub, router;
  };
  static Endpoints StopEngine(std::unique_ptr<TestEngine>& engine) {
    Endpoints ep{engine->pub_endpoint(), engine->router_endpoint()};
    engine.reset();
    return ep;
  }
  std::unique_ptr<TestEngine> StartEngine(const Endpoints& ep, uint32_t life) {
    return std::make_unique<TestEngine>(ctx_, life, ep.pub, ep.router);
  }
  void RestartEngine(std::unique_ptr<TestEngine>& engine, uint32_t life) {
    engine = StartEngine(StopEngine(engine), life);
  }
  const index::PublisherSlot& slot() { return *idx().publisher_slot(pub_); }
  index::PrefixIndex& idx() { return seg_.index(); }

  kvidx::testing::ScopedSegment seg_;
  zmq::context_t ctx_;
  index::NamespaceId ns_;
  index::PublisherId pub_;
  std::unique_ptr<Applier> applier_;
};

TEST_F(PublisherLinkTest, GapIsFilledByReplayInBothLayouts) {
  for (bool with_topic : {true, false}) {
    TestEngine engine(ctx_, with_topic ? 0 : 1);
    engine.with_topic = with_topic;
    uint32_t life = engine.life();
    if (!with_topic) {  // a fresh publisher state for the second round
      (void)idx().ClearPublisher(pub_);
      index::St(idx().ingest_state(pub_)->has_seq, 0u);
    }
    auto link = MakeLink(engine);
    uint64_t n = 0;
    WarmUp(*link, engine, &n);
    uint64_t gaps = slot().ingest.gaps;
    engine.Publish(n);
    engine.Publish(n + 1, /*lose=*/true);
    engine.Publish(n + 2);
    ASSERT_TRUE(PumpUntilApplied(*link, engine, n + 2));
    EXPECT_GT(slot().ingest.gaps, gaps);
    EXPECT_TRUE(HoldsExactly(life, 0, n + 2)) << " topic " << with_topic;
    EXPECT_EQ(slot().ingest.resyncs, 0u);
    EXPECT_EQ(slot().ingest.gap_open, 0u);
  }
}

TEST_F(PublisherLinkTest, ReplayThatStartsLateIsAnUnverifiableGap) {
  TestEngine engine(ctx_);
  auto link = MakeLink(engine);
  engine.Publish(0);
  engine.Publish(1);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 1));
  uint64_t epoch = slot().ingest.epoch;
  engine.ring_cap = 2;  // the engine's buffer keeps 2 batches: 2 is gone once 4 is published
  engine.Publish(2, /*lose=*/true);
  engine.Publish(3, /*lose=*/true);
  engine.Publish(4);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 4));
  EXPECT_EQ(slot().ingest.epoch, epoch + 1);
  EXPECT_EQ(slot().ingest.resyncs, 1u);
  EXPECT_EQ(slot().ingest.unverifiable_gaps, 1u);
  EXPECT_FALSE(Holds(0));              // dropped: what batch 2 removed is unknown
  EXPECT_TRUE(HoldsExactly(0, 3, 4));  // rebuilt from what the engine still has
}

TEST_F(PublisherLinkTest, LostEndMarkerHitsTheDeadlineAndIsAskedAgain) {
  TestEngine engine(ctx_);
  auto link = MakeLink(engine);
  engine.Publish(0);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 0));
  engine.send_end = false;
  engine.Publish(1, /*lose=*/true);
  engine.Publish(2);
  uint64_t replays = slot().ingest.replays;
  // Without end markers the replay never completes: the link asks again on each deadline.
  ASSERT_TRUE(PumpUntil(*link, &engine, [&] { return slot().ingest.replays >= replays + 3; }));
  EXPECT_TRUE(link->replaying());
  engine.send_end = true;
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 2));
  EXPECT_TRUE(HoldsExactly(0, 0, 2));
  EXPECT_EQ(slot().ingest.resyncs, 0u);
}

TEST_F(PublisherLinkTest, SequenceGoingBackwardsWithOtherContentIsAnEngineRestart) {
  auto engine = std::make_unique<TestEngine>(ctx_);
  auto link = MakeLink(*engine);
  for (uint64_t s = 0; s < 5; ++s) engine->Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 4));
  // The process restarts on the same ports: sequences from 0, other content.
  RestartEngine(engine, 1);
  ASSERT_TRUE(PumpUntil(*link, engine.get(), [&] { return slot().ingest.restarts >= 1; }));
  engine->Publish(0);
  engine->Publish(1);
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 1));
  EXPECT_EQ(slot().ingest.resyncs, 1u);
  EXPECT_TRUE(HoldsExactly(1, 0, 1));
}

TEST_F(PublisherLinkTest, DuplicateLiveBatchIsNotARestart) {
  TestEngine engine(ctx_);
  auto link = MakeLink(engine);
  uint64_t n = 0;
  WarmUp(*link, engine, &n);
  engine.Publish(n - 1);  // the same batch again (same content, same sequence)
  engine.Publish(n);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, n));
  EXPECT_EQ(slot().ingest.resyncs, 0u);
  EXPECT_GE(link->machine()->counters().duplicates, 1u);
  EXPECT_TRUE(HoldsExactly(0, 0, n));
}

// (a) A live batch lost while a replay runs leaves a hole among the buffered batches: it is
// asked for again, not a resync.
TEST_F(PublisherLinkTest, RegressionA_LiveBatchLostDuringAReplayIsAskedAgain) {
  TestEngine engine(ctx_);
  auto link = MakeLink(engine);
  uint64_t n = 0;
  WarmUp(*link, engine, &n);
  engine.hold_requests = true;
  engine.Publish(n, /*lose=*/true);
  engine.Publish(n + 1);  // a gap: a replay is requested and held by the engine
  ASSERT_TRUE(PumpUntil(*link, &engine, [&] { return engine.pending() >= 1; }));
  engine.Publish(n + 2);
  engine.Publish(n + 3, /*lose=*/true);  // lost while the replay runs
  engine.Publish(n + 4);
  ASSERT_TRUE(PumpUntil(*link, &engine, [&] { return link->machine()->buffered() >= 3; }));
  engine.hold_requests = false;
  ASSERT_TRUE(PumpUntilApplied(*link, engine, n + 4));
  EXPECT_EQ(slot().ingest.resyncs, 0u);
  EXPECT_TRUE(HoldsExactly(0, 0, n + 4));
}

// (b) The replay answer for N arrives before the live copy of N: the late copy is a duplicate.
TEST_F(PublisherLinkTest, RegressionB_LateLiveCopyAfterItsReplayIsADuplicate) {
  TestEngine engine(ctx_);
  auto link = MakeLink(engine);
  uint64_t n = 0;
  WarmUp(*link, engine, &n);
  engine.Publish(n, /*lose=*/true);
  engine.Publish(n + 1, /*lose=*/false, /*hold=*/true);  // its live copy comes late
  engine.Publish(n + 2);                                 // gap: the replay brings n..n+2
  ASSERT_TRUE(PumpUntilApplied(*link, engine, n + 2));
  uint64_t dups = link->machine()->counters().duplicates;
  engine.ReleaseHeld();
  engine.Publish(n + 3);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, n + 3));
  EXPECT_EQ(slot().ingest.resyncs, 0u);
  EXPECT_EQ(slot().ingest.restarts, 0u);
  EXPECT_GT(link->machine()->counters().duplicates, dups);
  EXPECT_TRUE(HoldsExactly(0, 0, n + 3));
}

// (c) Requests sent while the engine is down are never answered late by the new engine: each
// times out, the replay socket is reset, and the one request answered is the current one.
TEST_F(PublisherLinkTest, RegressionC_RequestsWhileTheEngineIsDownAreNotTakenLate) {
  auto engine = std::make_unique<TestEngine>(ctx_);
  auto link = MakeLink(*engine);
  for (uint64_t s = 0; s < 4; ++s) engine->Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 3));
  Endpoints down = StopEngine(engine);  // idle probes go unanswered and time out
  uint64_t asked = slot().ingest.replays + slot().ingest.probes;
  ASSERT_TRUE(PumpUntil(*link, nullptr,
                        [&] { return slot().ingest.replays + slot().ingest.probes >= asked + 3; }));
  engine = StartEngine(down, 1);
  for (uint64_t s = 0; s < 6; ++s) engine->Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 5));
  EXPECT_TRUE(HoldsExactly(1, 0, 5));
  EXPECT_EQ(slot().ingest.resyncs, 1u);
  EXPECT_GE(slot().ingest.restarts, 1u);
}

// (d) The start-up replay before the replay endpoint exists: nothing live is accepted as the
// start of the stream until a replay has covered it.
TEST_F(PublisherLinkTest, RegressionD_NoStreamStartWithoutAReplay) {
  // Reserve two free ports, then let the engine come up with its PUB only.
  std::string router_ep;
  {
    TestEngine probe(ctx_);
    router_ep = probe.router_endpoint();
  }
  auto pub_only = std::make_unique<TestEngine>(ctx_, 0, "tcp://127.0.0.1:*", "");
  auto link = MakeLink(pub_only->pub_endpoint(), router_ep, Options());
  ASSERT_TRUE(PumpUntil(*link, nullptr, [&] { return slot().ingest.connected == 1u; }));
  // The engine publishes (its first 3 batches before kvidx listens) until kvidx holds 5 live
  // batches it may not apply: no replay has covered the start.
  uint64_t n = 0;
  ASSERT_TRUE(PumpUntil(*link, nullptr, [&] {
    if (link->machine()->buffered() >= 5) return true;
    pub_only->Publish(n, /*lose=*/n < 3);
    ++n;
    return false;
  }));
  EXPECT_EQ(slot().ingest.batches, 0u) << "applied a live batch no replay had covered";
  EXPECT_FALSE(slot().ingest.has_seq);
  // The engine's replay endpoint comes up (same process, same ring).
  std::string pub_ep = pub_only->pub_endpoint();
  pub_only.reset();
  TestEngine engine(ctx_, 0, pub_ep, router_ep);
  for (uint64_t s = 0; s < n; ++s) engine.Publish(s, /*lose=*/true);  // its ring: 0..n-1
  engine.Publish(n);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, n));
  EXPECT_TRUE(HoldsExactly(0, 0, n));
  EXPECT_EQ(slot().ingest.resyncs, 0u);
}

// Over-report: the worker is down across an engine restart and the new engine is past the old
// sequence. The successor's continuity check finds other content and rebuilds.
TEST_F(PublisherLinkTest, WorkerDownAcrossAnEngineRestartDropsTheDeadEnginesBlocks) {
  auto engine = std::make_unique<TestEngine>(ctx_);
  auto link = MakeLink(*engine);
  for (uint64_t s = 0; s < 6; ++s) engine->Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 5));
  link.reset();  // the worker dies
  RestartEngine(engine, 1);
  for (uint64_t s = 0; s < 12; ++s) engine->Publish(s);  // past the old sequence
  applier_ = std::make_unique<Applier>(&idx(), ApplierConfig{});
  link = MakeLink(*engine);  // the worker restarts
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 11));
  EXPECT_TRUE(HoldsExactly(1, 0, 11));
  EXPECT_EQ(slot().ingest.resyncs, 1u);
  EXPECT_EQ(slot().ingest.restarts, 1u);
}

// The same engine, worker restarted: continuity holds, nothing is dropped or applied twice.
TEST_F(PublisherLinkTest, WorkerRestartOnTheSameEngineResumesExactly) {
  TestEngine engine(ctx_);
  auto link = MakeLink(engine);
  for (uint64_t s = 0; s < 4; ++s) engine.Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 3));
  link.reset();
  for (uint64_t s = 4; s < 8; ++s) engine.Publish(s);  // while the worker is down
  applier_ = std::make_unique<Applier>(&idx(), ApplierConfig{});
  link = MakeLink(engine);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 7));
  EXPECT_TRUE(HoldsExactly(0, 0, 7));
  EXPECT_EQ(slot().ingest.resyncs, 0u);
}

// Endpoint change (a pod's new IP): another engine behind the new address.
TEST_F(PublisherLinkTest, EndpointChangeToAnotherEngineDropsTheOldOnesBlocks) {
  TestEngine a(ctx_, 0);
  auto link = MakeLink(a);
  for (uint64_t s = 0; s < 5; ++s) a.Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, a, 4));
  TestEngine b(ctx_, 1);
  for (uint64_t s = 0; s < 7; ++s) b.Publish(s);
  link = MakeLink(b);  // the worker relinks the publisher to its new endpoints
  ASSERT_TRUE(PumpUntilApplied(*link, b, 6));
  EXPECT_TRUE(HoldsExactly(1, 0, 6));
  EXPECT_EQ(slot().ingest.resyncs, 1u);
}

// An engine that stops answering is reported unreachable, and its blocks are dropped after the
// configured time; when it comes back its stream is rebuilt.
TEST_F(PublisherLinkTest, UnreachableEngineIsReportedThenDropped) {
  auto engine = std::make_unique<TestEngine>(ctx_);
  LinkOptions o = Options();
  o.unreachable_after_ms = 300;
  o.drop_after_ms = 600;
  auto link = MakeLink(engine->pub_endpoint(), engine->router_endpoint(), o);
  for (uint64_t s = 0; s < 3; ++s) engine->Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 2));
  EXPECT_EQ(slot().ingest.reachable, 1u);
  Endpoints down = StopEngine(engine);
  ASSERT_TRUE(PumpUntil(*link, nullptr, [&] { return slot().ingest.reachable == 0u; }));
  EXPECT_EQ(link->machine()->state(), StreamState::kUnreachable);
  EXPECT_GT(idx().Dump().size(), 0u);  // reported, not yet dropped
  ASSERT_TRUE(PumpUntil(*link, nullptr, [&] { return slot().ingest.stale_drops == 1u; }));
  EXPECT_EQ(idx().Dump().size(), 0u);
  engine = StartEngine(down, 0);
  for (uint64_t s = 0; s < 5; ++s) engine->Publish(s);
  ASSERT_TRUE(PumpUntilApplied(*link, *engine, 4));
  EXPECT_EQ(slot().ingest.reachable, 1u);
  EXPECT_TRUE(HoldsExactly(0, 0, 4))
      << "batches " << slot().ingest.batches << " stored " << slot().index.stored_blocks << " dups "
      << slot().index.duplicate_stores << " resyncs " << slot().ingest.resyncs << " unverifiable "
      << slot().ingest.unverifiable_gaps << " rejected " << slot().index.rejected_stores
      << " orphans " << slot().index.orphan_blocks;
}

// Issue 9, defect 4: the sequence-id form's tables live in the worker; a restarted worker
// rebuilds them from a replay instead of resuming without them (its removals would be lost).
TEST_F(PublisherLinkTest, SequenceIdPublisherIsRebuiltAfterAWorkerRestart) {
  auto seq_batch = [](std::vector<uint32_t> numbers, std::vector<std::vector<uint32_t>> tokens) {
    return sim::EncodeSeqIdBatch({sim::SeqIdEvent{1, std::move(numbers), std::move(tokens)}});
  };

  TestEngine engine(ctx_);
  auto link =
      MakeLink(engine.pub_endpoint(), engine.router_endpoint(), Options(), false, Dialect::kSeqId);
  engine.PublishPayload(0, seq_batch({0}, {{5, 6}}));
  engine.PublishPayload(1, seq_batch({1}, {{7, 8}}));
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 1));
  ASSERT_EQ(idx().Dump().size(), 2u);
  link.reset();  // the worker dies; its sequence table with it
  applier_ = std::make_unique<Applier>(&idx(), ApplierConfig{});
  link =
      MakeLink(engine.pub_endpoint(), engine.router_endpoint(), Options(), false, Dialect::kSeqId);
  engine.PublishPayload(2, seq_batch({1}, {}));  // sequence 1 drops block 1
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 2));
  EXPECT_EQ(idx().Dump().size(), 1u) << "block 1 of sequence 1 outlived its removal";
  EXPECT_EQ(slot().index.unknown_removes, 0u);
  EXPECT_EQ(slot().ingest.resyncs, 1u);
}

TEST_F(PublisherLinkTest, GarbageFramesAreCountedAndNeverApplied) {
  TestEngine engine(ctx_);
  auto link = MakeLink(engine);
  ASSERT_TRUE(PumpUntil(*link, &engine, [&] {
    return link->machine()->state() == StreamState::kStreaming && slot().ingest.connected;
  }));
  engine.SendRaw({"t", "12345"});             // two frames
  engine.SendRaw({"t", "short", "payload"});  // seq not 8 bytes
  engine.Publish(0);
  engine.SendRaw({"t", std::string(8, '\0') + "", "\xc1"});  // seq 0 again, not msgpack
  engine.Publish(1);
  ASSERT_TRUE(PumpUntilApplied(*link, engine, 1));
  EXPECT_EQ(idx().header()->ingest.garbage_frames, 2u);
  EXPECT_TRUE(HoldsExactly(0, 0, 1));
}

TEST_F(PublisherLinkTest, PublisherThatConnectsToUs) {
  // The link binds a free port; the engine connects its PUB to it.
  TestEngine router_only(ctx_, 0, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
  auto link = MakeLink("tcp://127.0.0.1:*", router_only.router_endpoint(), Options(),
                       /*bind=*/true);
  std::string bound = link->bound_endpoint();
  ASSERT_NE(bound.find("tcp://127.0.0.1:"), std::string::npos) << bound;
  TestEngine engine(ctx_, 0, bound, "", /*pub_connects=*/true);
  ASSERT_TRUE(PumpUntil(*link, &router_only, [&] { return slot().ingest.connected == 1u; }));
  // The engine's ring is on its ROUTER: the test keeps it in router_only.
  router_only.Publish(0, /*lose=*/true);
  router_only.Publish(1, /*lose=*/true);
  engine.Publish(0);
  engine.Publish(1);
  ASSERT_TRUE(PumpUntilApplied(*link, router_only, 1));
  EXPECT_TRUE(HoldsExactly(0, 0, 1));
  EXPECT_GE(slot().ingest.connects, 1u);
}

}  // namespace
}  // namespace kvidx::ingest
