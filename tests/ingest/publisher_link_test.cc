// PublisherLink against an engine played by the test over real ZeroMQ sockets on loopback:
// gaps, replays in both layouts, replays that cannot cover a gap, lost end markers, engine
// restarts, garbage frames, and the publisher-connects (bind) mode.
#include "ingest/publisher_link.h"

#include <unistd.h>

#include <chrono>
#include <map>

#include "gtest/gtest.h"

#include <msgpack.hpp>
#include <zmq_addon.hpp>

#include "shared/clock.h"
#include "tests/index/test_util.h"

namespace kvidx::ingest {
namespace {

int Port(int slot) { return 30000 + (getpid() % 1000) * 16 + slot * 2; }

// One stored block per batch: hash 1000 + seq, tokens {seq, seq + 1}, no parent.
std::vector<uint8_t> Batch(uint64_t seq) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_array(3);
  pk.pack(1.0);
  pk.pack_array(1);
  pk.pack_array(7);
  pk.pack(std::string("BlockStored"));
  pk.pack_array(1);
  pk.pack(1000 + seq);
  pk.pack_nil();
  pk.pack(std::vector<uint32_t>{static_cast<uint32_t>(seq), static_cast<uint32_t>(seq + 1)});
  pk.pack(2);
  pk.pack_nil();
  pk.pack(std::string("GPU"));
  pk.pack(0);
  return {buf.data(), buf.data() + buf.size()};
}

zmq::message_t Seq8(uint64_t s) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(s >> (56 - 8 * i));
  return zmq::message_t(b, 8);
}

class TestEngine {
 public:
  TestEngine(zmq::context_t& ctx, int port, bool pub_connects = false)
      : pub_(ctx, zmq::socket_type::pub), router_(ctx, zmq::socket_type::router) {
    std::string ep = "tcp://127.0.0.1:" + std::to_string(port);
    if (pub_connects)
      pub_.connect(ep);
    else
      pub_.bind(ep);
    router_.bind("tcp://127.0.0.1:" + std::to_string(port + 1));
    pub_.set(zmq::sockopt::linger, 0);
    router_.set(zmq::sockopt::linger, 0);
  }
  void Publish(uint64_t seq, bool lose = false) {
    auto payload = Batch(seq);
    ring_[seq] = payload;
    if (lose) return;
    pub_.send(zmq::str_buffer("t"), zmq::send_flags::sndmore);
    pub_.send(Seq8(seq), zmq::send_flags::sndmore);
    pub_.send(zmq::buffer(payload));
  }
  void SendRaw(std::vector<std::string> frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      pub_.send(zmq::buffer(frames[i]),
                i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  void Forget(uint64_t seq) { ring_.erase(seq); }
  // Answers replay requests from the ring.
  void Serve() {
    std::vector<zmq::message_t> req;
    while (zmq::recv_multipart(router_, std::back_inserter(req), zmq::recv_flags::dontwait)) {
      ++requests;
      uint64_t start = 0;
      for (size_t i = 0; i < req[2].size(); ++i) start = (start << 8) | req[2].data<uint8_t>()[i];
      for (auto& [s, payload] : ring_) {
        if (s < start) continue;
        Reply(req[0], s, payload);
      }
      if (send_end) Reply(req[0], kReplayEndSeq, {});
      req.clear();
    }
  }
  bool with_topic = true;
  bool send_end = true;
  int requests = 0;

 private:
  void Reply(const zmq::message_t& id, uint64_t s, const std::vector<uint8_t>& payload) {
    router_.send(zmq::buffer(id.data(), id.size()), zmq::send_flags::sndmore);
    router_.send(zmq::message_t(), zmq::send_flags::sndmore);
    if (with_topic) router_.send(zmq::str_buffer("t"), zmq::send_flags::sndmore);
    router_.send(Seq8(s), zmq::send_flags::sndmore);
    router_.send(zmq::buffer(payload));
  }
  zmq::socket_t pub_;
  zmq::socket_t router_;
  std::map<uint64_t, std::vector<uint8_t>> ring_;
};

class PublisherLinkTest : public ::testing::Test {
 protected:
  PublisherLinkTest() : seg_("link"), ctx_(1) {
    ns_ = *idx().RegisterNamespace({.model = "m", .block_size = 2});
    pub_ = *idx().RegisterPublisher({.pod = "p", .ns = ns_});
    applier_ = std::make_unique<Applier>(&idx(), ApplierConfig{});
  }
  std::unique_ptr<PublisherLink> MakeLink(int port, bool bind = false, uint32_t timeout_ms = 300) {
    PublisherConfig pc;
    pc.pod = "p";
    pc.endpoint = "tcp://127.0.0.1:" + std::to_string(port);
    pc.replay_endpoint = "tcp://127.0.0.1:" + std::to_string(port + 1);
    pc.bind = bind;
    LinkOptions o;
    o.replay_timeout_ms = timeout_ms;
    o.reconnect_initial_ms = 50;
    o.idle_probe_ms = 0;
    auto link = std::make_unique<PublisherLink>(ctx_, &idx(), applier_.get(), pub_, pc, o);
    EXPECT_TRUE(link->Start().ok());
    return link;
  }
  void Pump(PublisherLink& link, TestEngine& engine, int ms) {
    int64_t until = MonotonicNanos() + int64_t{ms} * 1'000'000;
    while (MonotonicNanos() < until) {
      std::vector<zmq::pollitem_t> items;
      link.AppendPollItems(&items);
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds(5));
      link.Handle(items.data());
      link.Tick(MonotonicNanos());
      engine.Serve();
    }
  }
  bool Holds(uint64_t seq) {
    auto keys = *idx().KeysForTokens(
        ns_, std::vector<uint32_t>{static_cast<uint32_t>(seq), static_cast<uint32_t>(seq + 1)});
    return !idx().Holders(keys[0]).empty();
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
    int port = Port(with_topic ? 0 : 1);
    TestEngine engine(ctx_, port);
    engine.with_topic = with_topic;
    auto link = MakeLink(port);
    Pump(*link, engine, 400);  // connects; the first-contact replay finds nothing
    uint64_t base = with_topic ? 0 : 10;
    if (!with_topic) {  // a fresh publisher slot state for the second round
      (void)idx().ClearPublisher(pub_);
      index::St(idx().mutable_publisher_slot(pub_)->has_seq, 0u);
      for (uint64_t s = 0; s < base; ++s) engine.Publish(s, /*lose=*/true);
    }
    engine.Publish(base + 0);
    engine.Publish(base + 1);
    engine.Publish(base + 2, /*lose=*/true);
    engine.Publish(base + 3);
    Pump(*link, engine, 600);
    for (uint64_t s = base; s < base + 4; ++s)
      EXPECT_TRUE(Holds(s)) << s << " topic " << with_topic;
    EXPECT_EQ(slot().last_seq, base + 3);
    EXPECT_EQ(slot().resyncs, 0u);
    EXPECT_EQ(slot().gap_open, 0u);
  }
  EXPECT_GE(slot().gaps, 1u);
}

TEST_F(PublisherLinkTest, ReplayThatStartsLateResyncsTheEpoch) {
  int port = Port(2);
  TestEngine engine(ctx_, port);
  auto link = MakeLink(port);
  Pump(*link, engine, 400);
  engine.Publish(0);
  engine.Publish(1);
  Pump(*link, engine, 300);
  ASSERT_TRUE(Holds(1));
  uint64_t epoch = slot().epoch;
  engine.Publish(2, /*lose=*/true);
  engine.Forget(2);  // the engine's buffer no longer has it
  engine.Publish(3);
  Pump(*link, engine, 600);
  EXPECT_EQ(slot().epoch, epoch + 1);
  EXPECT_EQ(slot().resyncs, 1u);
  EXPECT_FALSE(Holds(0));  // dropped with the resync
  EXPECT_TRUE(Holds(3));   // resynced from what the engine still has
  EXPECT_EQ(slot().last_seq, 3u);
}

TEST_F(PublisherLinkTest, LostEndMarkerHitsTheDeadline) {
  int port = Port(3);
  TestEngine engine(ctx_, port);
  engine.send_end = false;
  auto link = MakeLink(port, false, /*timeout_ms=*/200);
  Pump(*link, engine, 400);
  engine.Publish(0);
  Pump(*link, engine, 300);
  engine.Publish(1, /*lose=*/true);
  engine.Forget(1);
  engine.Publish(2);
  Pump(*link, engine, 300);
  EXPECT_FALSE(link->replaying());
  EXPECT_TRUE(Holds(2));
  EXPECT_GE(slot().resyncs, 1u);
}

TEST_F(PublisherLinkTest, SequenceGoingBackwardsIsAnEngineRestart) {
  int port = Port(4);
  TestEngine engine(ctx_, port);
  auto link = MakeLink(port);
  Pump(*link, engine, 400);
  for (uint64_t s = 0; s < 5; ++s) engine.Publish(s);
  Pump(*link, engine, 300);
  ASSERT_TRUE(Holds(4));
  TestEngine* e = &engine;
  e->Forget(0);
  for (uint64_t s = 1; s < 5; ++s) e->Forget(s);
  // The new process starts again at 0 with other content (batch 0 of the restarted engine is
  // the test's batch 7's content, marked by its own seq in the ring).
  engine.Publish(0);
  Pump(*link, engine, 400);
  EXPECT_EQ(slot().resyncs, 1u);
  EXPECT_FALSE(Holds(4));
  EXPECT_TRUE(Holds(0));
  EXPECT_EQ(slot().last_seq, 0u);
}

TEST_F(PublisherLinkTest, GarbageFramesAreCountedAndNeverApplied) {
  int port = Port(5);
  TestEngine engine(ctx_, port);
  auto link = MakeLink(port);
  Pump(*link, engine, 400);
  engine.SendRaw({"t", "12345"});                       // two frames
  engine.SendRaw({"t", "short", "payload"});            // seq not 8 bytes
  engine.SendRaw({"t", std::string(8, '\0'), "\xc1"});  // a batch that is not msgpack
  engine.Publish(1);
  Pump(*link, engine, 300);
  EXPECT_EQ(idx().header()->garbage_frames, 2u);
  EXPECT_EQ(idx().header()->decode_errors[static_cast<int>(DecodeReason::kMalformed)], 1u);
  EXPECT_TRUE(Holds(1));
  EXPECT_EQ(idx().Stats().blocks, 1u);
}

TEST_F(PublisherLinkTest, PublisherThatConnectsToUs) {
  int port = Port(6);
  auto link = MakeLink(port, /*bind=*/true);
  TestEngine engine(ctx_, port, /*pub_connects=*/true);
  Pump(*link, engine, 500);
  engine.Publish(0);
  engine.Publish(1);
  Pump(*link, engine, 300);
  EXPECT_TRUE(Holds(0));
  EXPECT_TRUE(Holds(1));
  EXPECT_EQ(slot().connected, 1u);
  EXPECT_GE(slot().connects, 1u);
}

}  // namespace
}  // namespace kvidx::ingest
