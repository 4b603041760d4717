// The query service in process, over a real segment and control area (no gRPC transport): what
// Lookup answers when some holders cannot be vouched for, and what the ingest side records for
// WatchEvents (issue 9, defect 10).
#include "query/service.h"

#include <random>
#include <set>

#include "gtest/gtest.h"

#include "control/control_area.h"
#include "ingest/applier.h"
#include "ingest/stream_machine.h"
#include "shared/clock.h"
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

// A columnar call (LookupRequest.columnar) says what PodMatches say, in columns, with each pod
// once per call: over 300 random queries of one call (partial prefixes, misses, unknown models,
// candidates, predictions) against twelve pods in every stream state.
TEST_F(ServiceTest, AColumnarCallAnswersWhatPodMatchesAnswerWithEachPodOnce) {
  std::mt19937 rng(11);
  std::vector<std::vector<uint32_t>> families(3);
  for (uint32_t f = 0; f < 3; ++f) {
    for (uint32_t i = 0; i < 24; ++i) families[f].push_back(f * 100 + i + 1);
  }
  const ingest::StreamState states[] = {ingest::StreamState::kStreaming,
                                        ingest::StreamState::kReplaying,
                                        ingest::StreamState::kUnreachable};
  for (int p = 0; p < 12; ++p) {
    const auto& fam = families[rng() % 3];
    const size_t blocks = 1 + rng() % 12;
    index::PublisherId id = Pod("pod-" + std::to_string(p), {fam.begin(), fam.begin() + 2 * blocks},
                                states[rng() % 3], rng() % 3 != 0);
    index::PublisherIngestState* st = writer_->ingest_state(id);
    // Distinct event ages, whole seconds apart (or none), so that no two pods tie on them.
    if (p % 4 != 0) index::St(st->last_event_wall_ns, WallNanos() - int64_t{p} * 1'000'000'000);
    if (p == 5) {
      index::St(st->has_instance, 1u);
      index::St(st->instance_lo, uint64_t{77});
    }
  }
  v1::AnnounceRequest ann;
  ann.mutable_query()->mutable_namespace_()->set_model("m");
  for (uint32_t t : families[1]) ann.mutable_query()->mutable_tokens()->add_ids(t);
  ann.mutable_pod()->set_pod("pod-3");
  v1::AnnounceResponse ann_resp;
  ASSERT_TRUE(service_->Announce(nullptr, &ann, &ann_resp).ok());

  v1::LookupRequest full;
  for (int i = 0; i < 300; ++i) {
    v1::LookupQuery* q = full.add_queries();
    q->mutable_namespace_()->set_model(i % 50 == 7 ? "unknown" : "m");
    const auto& fam = families[rng() % 3];
    const size_t blocks = 1 + rng() % 12;
    for (size_t k = 0; k < 2 * blocks; ++k) q->mutable_tokens()->add_ids(fam[k]);
    if (i % 9 == 4) q->mutable_tokens()->set_ids(static_cast<int>(rng() % (2 * blocks)), 9999);
    if (i % 11 == 3) {
      q->add_candidates()->set_pod("pod-" + std::to_string(rng() % 12));
      q->mutable_candidates(0)->set_dp_rank(-1);
    }
    if (i % 5 == 0) q->set_include_predictions(true);
  }
  v1::LookupRequest columnar = full;
  columnar.set_columnar(true);
  v1::LookupResponse a, b;
  const int64_t t0 = WallNanos();
  ASSERT_TRUE(service_->Lookup(nullptr, &full, &a).ok());
  ASSERT_TRUE(service_->Lookup(nullptr, &columnar, &b).ok());
  // Ages are read at each call: they may differ by the time between the calls, no more.
  const int64_t slack_ms = (WallNanos() - t0) / 1'000'000 + 1;
  ASSERT_EQ(a.results_size(), 300);
  ASSERT_EQ(b.results_size(), 300);
  EXPECT_EQ(a.pods_size(), 0);
  std::set<std::string> named;
  std::vector<bool> used(static_cast<size_t>(b.pods_size()), false);
  for (const auto& p : b.pods()) EXPECT_TRUE(named.insert(p.pod()).second) << p.pod();
  uint64_t matches = 0, predicted = 0;
  for (int i = 0; i < 300; ++i) {
    const v1::LookupResult& ra = a.results(i);
    const v1::LookupResult& rb = b.results(i);
    EXPECT_FALSE(ra.has_columns());
    EXPECT_EQ(rb.matches_size(), 0);
    EXPECT_FALSE(rb.has_best());
    EXPECT_EQ(ra.prompt_blocks(), rb.prompt_blocks());
    EXPECT_EQ(ra.namespace_known(), rb.namespace_known());
    const v1::MatchColumns& c = rb.columns();
    ASSERT_EQ(c.pod_size(), ra.matches_size()) << "query " << i;
    ASSERT_EQ(c.matched_blocks_size(), c.pod_size());
    ASSERT_EQ(c.gpu_blocks_size(), c.pod_size());
    ASSERT_EQ(c.cpu_blocks_size(), c.pod_size());
    ASSERT_EQ(c.disk_blocks_size(), c.pod_size());
    const bool predictions = full.queries(i).include_predictions() && ra.matches_size() > 0;
    ASSERT_EQ(c.predicted_blocks_size(), predictions ? c.pod_size() : 0) << "query " << i;
    for (int k = 0; k < c.pod_size(); ++k) {
      const v1::PodMatch& m = ra.matches(k);
      ASSERT_LT(c.pod(k), static_cast<uint32_t>(b.pods_size()));
      used[c.pod(k)] = true;
      const v1::MatchedPod& pod = b.pods(static_cast<int>(c.pod(k)));
      EXPECT_EQ(pod.pod(), m.pod());
      EXPECT_EQ(pod.dp_rank(), m.dp_rank());
      EXPECT_EQ(pod.kvbm_instance(), m.kvbm_instance());
      EXPECT_EQ(c.matched_blocks(k), m.matched_blocks());
      EXPECT_EQ(uint64_t{c.matched_blocks(k)} * rb.block_size(), m.matched_tokens());
      EXPECT_EQ(c.gpu_blocks(k), m.gpu_blocks());
      EXPECT_EQ(c.cpu_blocks(k), m.cpu_blocks());
      EXPECT_EQ(c.disk_blocks(k), m.disk_blocks());
      if (predictions) {
        EXPECT_EQ(c.predicted_blocks(k), m.predicted_blocks());
      }
      predicted += predictions ? m.predicted_blocks() : 0;
      const v1::Freshness& fa = m.freshness();
      const v1::Freshness& fb = pod.freshness();
      EXPECT_EQ(fa.stream(), fb.stream());
      EXPECT_EQ(fa.reachable(), fb.reachable());
      EXPECT_EQ(fa.connected(), fb.connected());
      EXPECT_EQ(fa.gap_open(), fb.gap_open());
      EXPECT_EQ(fa.epoch(), fb.epoch());
      EXPECT_EQ(fa.last_event_age_ms() < 0, fb.last_event_age_ms() < 0);
      EXPECT_LE(std::abs(fa.last_event_age_ms() - fb.last_event_age_ms()), slack_ms);
      ++matches;
    }
    EXPECT_EQ(rb.best_column() >= 0, ra.has_best()) << "query " << i;
    EXPECT_EQ(ra.best_column(), 0);
    if (ra.has_best()) {
      EXPECT_EQ(b.pods(static_cast<int>(c.pod(static_cast<int>(rb.best_column())))).pod(),
                ra.best().pod())
          << "query " << i;
    }
  }
  for (size_t p = 0; p < used.size(); ++p) EXPECT_TRUE(used[p]) << "pods[" << p << "] unused";
  EXPECT_GT(matches, 300u);  // the queries did match, many times over
  EXPECT_GT(predicted, 0u);  // and the announcement showed in both answers
  EXPECT_GE(b.pods_size(), 10);
}

}  // namespace
}  // namespace kvidx::query
