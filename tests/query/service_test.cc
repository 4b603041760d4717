// The query service in process, over a real segment and control area (no gRPC transport): what
// Lookup answers when some holders cannot be vouched for, and what the ingest side records for
// WatchEvents (issue 9, defect 10).
#include "query/service.h"

#include "gtest/gtest.h"

#include "control/control_area.h"
#include "ingest/applier.h"
#include "ingest/stream_machine.h"
#include "tests/index/test_util.h"

namespace kvidx::query {
namespace {

class ServiceTest : public ::testing::Test {
 protected:
  ServiceTest() : name_(kvidx::testing::UniqueSegmentName("service")) {
    index::Segment::Remove(name_);
    control::ControlArea::Remove(control::ControlName(name_));
    auto seg = index::Segment::Create(name_, kvidx::testing::SmallGeometry());
    EXPECT_TRUE(seg.ok());
    writer_ = std::make_unique<index::PrefixIndex>(seg->get());
    segment_ = std::move(*seg);
    ns_ = *writer_->RegisterNamespace({.model = "m", .block_size = 2});
    config_.models.push_back({.name = "m", .block_size = 2});
    auto ro = index::Segment::Attach(name_, index::Segment::Access::kReadOnly);
    auto control = control::ControlArea::Open(control::ControlName(name_));
    EXPECT_TRUE(ro.ok() && control.ok());
    service_ = std::make_unique<KvIndexService>(config_, std::move(*ro), std::move(*control));
  }
  ~ServiceTest() override {
    service_.reset();
    index::Segment::Remove(name_);
    control::ControlArea::Remove(control::ControlName(name_));
  }
  index::PublisherId Pod(const std::string& name, std::vector<uint32_t> tokens,
                         ingest::StreamState state, bool reachable) {
    index::PublisherId p = *writer_->RegisterPublisher({.pod = name, .ns = ns_});
    index::StoreRequest req;
    req.ns = ns_;
    std::vector<uint64_t> hashes;
    for (size_t i = 0; i < tokens.size() / 2; ++i) hashes.push_back(1000 * (p + 1) + i);
    req.engine_hashes = hashes;
    req.tokens = tokens;
    EXPECT_TRUE(writer_->Store(p, req).ok());
    index::PublisherIngestState* s = writer_->ingest_state(p);
    index::St(s->stream_state, static_cast<uint32_t>(state));
    index::St(s->reachable, reachable ? 1u : 0u);
    return p;
  }
  v1::LookupResult Lookup(std::vector<uint32_t> tokens) {
    v1::LookupRequest req;
    auto* q = req.add_queries();
    q->mutable_namespace_()->set_model("m");
    for (uint32_t t : tokens) q->mutable_tokens()->add_ids(t);
    v1::LookupResponse resp;
    EXPECT_TRUE(service_->Lookup(nullptr, &req, &resp).ok());
    return resp.results(0);
  }

  std::string name_;
  config::Config config_;
  std::unique_ptr<index::Segment> segment_;
  std::unique_ptr<index::PrefixIndex> writer_;
  index::NamespaceId ns_;
  std::unique_ptr<KvIndexService> service_;
};

TEST_F(ServiceTest, BestIsAPodWhoseStreamKvidxCanVouchFor) {
  // "stale" holds the longer prefix, but its engine is unreachable; "replaying" is mid-replay.
  Pod("stale", {1, 2, 3, 4, 5, 6}, ingest::StreamState::kUnreachable, false);
  Pod("replaying", {1, 2, 3, 4, 5, 6}, ingest::StreamState::kReplaying, true);
  Pod("fresh", {1, 2, 3, 4}, ingest::StreamState::kStreaming, true);
  v1::LookupResult r = Lookup({1, 2, 3, 4, 5, 6});
  ASSERT_EQ(r.matches_size(), 3);
  EXPECT_EQ(r.best().pod(), "fresh");
  for (const auto& m : r.matches()) {
    if (m.pod() == "stale") {
      EXPECT_FALSE(m.freshness().reachable());
      EXPECT_EQ(m.freshness().stream(), "unreachable");
      EXPECT_EQ(m.matched_blocks(), 3u);  // still reported, with its freshness
    }
  }
  // With no trusted holder, the longest match is still the best there is.
  v1::LookupResult only = Lookup({1, 2, 3, 4, 5, 6, 7, 8});
  EXPECT_EQ(only.best().pod(), "fresh");
}

TEST_F(ServiceTest, SequenceIdStoresAndRemovesReachTheEventRing) {
  index::PublisherId p = *writer_->RegisterPublisher({.pod = "seq", .ns = ns_});
  std::vector<ingest::AppliedInfo> seen;
  ingest::ApplierConfig ac;
  ac.on_applied = [&](const ingest::AppliedInfo& a) { seen.push_back(a); };
  ingest::Applier applier(writer_.get(), ac);
  ingest::EventBatch b;
  ingest::Event st;
  st.kind = ingest::EventKind::kSeqStored;
  st.sequence_id = 1;
  st.block_numbers = {0, 1};
  st.tokens = {1, 2, 3, 4};
  st.block_size = 2;
  b.events.push_back(st);
  ingest::Event rm;
  rm.kind = ingest::EventKind::kSeqRemoved;
  rm.sequence_id = 1;
  rm.block_numbers = {1};
  b.events.push_back(rm);
  ASSERT_TRUE(applier.Apply(p, b).ok());
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].kind, ingest::EventKind::kSeqStored);
  EXPECT_EQ(seen[2].kind, ingest::EventKind::kSeqRemoved);
  EXPECT_EQ(seen[2].first_key,
            writer_->KeysForTokens(ns_, std::vector<uint32_t>{1, 2, 3, 4})->at(1));
}

}  // namespace
}  // namespace kvidx::query
