// Ingest workers in process, over a real segment and control area: admin commands reach only
// the publishers the executing worker owns (issue 9, defect 3).
#include "ingest/worker.h"

#include <thread>

#include "gtest/gtest.h"

#include "tests/common/children.h"
#include "tests/index/test_util.h"

namespace kvidx::ingest {
namespace {

// A configuration of `workers` workers over a fresh small segment, with `pods` (pod, rank)
// publishers of model "m" pointing nowhere (their links just retry); the segment and its
// control area are removed when the returned guard goes.
struct TestConfig {
  Config cfg;
  explicit TestConfig(const char* what, uint32_t workers,
                      const std::vector<std::pair<std::string, uint32_t>>& pods) {
    cfg.segment = kvidx::testing::UniqueSegmentName(what);
    cfg.geometry = kvidx::testing::SmallGeometry();
    cfg.workers = workers;
    cfg.models.push_back({.name = "m", .block_size = 2});
    for (const auto& [pod, rank] : pods) {
      PublisherConfig pc;
      pc.pod = pod;
      pc.dp_rank = rank;
      pc.model = "m";
      pc.endpoint = "tcp://127.0.0.1:9";
      pc.dialect = Dialect::kVllm;
      cfg.publishers.push_back(pc);
    }
    Remove();
  }
  ~TestConfig() { Remove(); }
  void Remove() {
    index::Segment::Remove(cfg.segment);
    control::ControlArea::Remove(control::ControlName(cfg.segment));
  }
};

TEST(WorkerTest, ClearOfAPodTouchesOnlyTheExecutingWorkersPublishers) {
  // A pod whose two DP ranks are owned by different workers.
  std::string pod;
  for (int i = 0; pod.empty(); ++i) {
    std::string cand = "pod-" + std::to_string(i);
    if (OwnerWorker(cand, 0, 2) != OwnerWorker(cand, 1, 2)) pod = cand;
  }
  TestConfig tc("worker", 2, {{pod, 0}, {pod, 1}});
  const Config& cfg = tc.cfg;
  Worker w0(cfg, 0);
  ASSERT_TRUE(w0.Init().ok());
  index::PrefixIndex* idx = w0.index();
  auto ns = *idx->FindNamespace("m", "");
  index::PublisherId p0 = *idx->FindPublisher(pod, 0), p1 = *idx->FindPublisher(pod, 1);
  uint32_t owner0 = idx->publisher_slot(p0)->id.worker;
  index::PublisherId foreign = owner0 == 0 ? p1 : p0;  // owned by worker 1
  for (index::PublisherId p : {p0, p1}) {
    index::StoreRequest req;
    req.ns = ns;
    std::vector<uint64_t> hashes = {1, 2};
    std::vector<uint32_t> tokens = {1, 2, 3, 4};
    req.engine_hashes = hashes;
    req.tokens = tokens;
    req.block_size = 2;
    ASSERT_TRUE(idx->Store(p, req).ok());
  }
  uint64_t foreign_ops = idx->publisher_slot(foreign)->index.applied_ops;

  auto control = control::ControlArea::Open(control::ControlName(cfg.segment));
  ASSERT_TRUE(control.ok());
  control::Command c{};
  c.op = static_cast<uint32_t>(control::CommandOp::kClearPod);
  ASSERT_TRUE(control::CopyField(c.args.pod, pod));
  c.args.dp_rank = -1;  // every rank: the query server sends it to each owning worker
  c.worker = 0;
  auto id = (*control)->Post(c);
  ASSERT_TRUE(id.ok());
  std::atomic<bool> stop{false};
  std::thread runner([&] { w0.Run(stop); });
  auto done = (*control)->Await(*id, 10000);
  stop = true;
  runner.join();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->command.result.publishers, 1u) << "worker 0 cleared a publisher it does not own";
  EXPECT_EQ(idx->publisher_slot(foreign)->index.pairs, 2u);
  EXPECT_EQ(idx->publisher_slot(foreign)->index.applied_ops, foreign_ops)
      << "a non-owner wrote the publisher's applied-op counter";
}

// Issue 9, defect 9: a reload applies the file's diff: a publisher removed from it is
// unregistered, one whose hash scope changed is rebuilt (its old mappings could never resolve
// a removal again), and a dialect change relinks.
TEST(WorkerTest, ReloadAppliesRemovalsAndChanges) {
  TestConfig tc("reload", 1, {{"keep", 0}, {"drop", 0}, {"rescope", 0}});
  const Config& cfg = tc.cfg;
  Worker w(cfg, 0);
  ASSERT_TRUE(w.Init().ok());
  index::PrefixIndex* idx = w.index();
  auto ns = *idx->FindNamespace("m", "");
  for (const char* pod : {"keep", "drop", "rescope"}) {
    index::StoreRequest req;
    req.ns = ns;
    std::vector<uint64_t> hashes = {7};
    std::vector<uint32_t> tokens = {1, 2};
    req.engine_hashes = hashes;
    req.tokens = tokens;
    ASSERT_TRUE(idx->Store(*idx->FindPublisher(pod, 0), req).ok());
  }
  // "drop" carries a further KVBM instance ("drop#1", no endpoint, the same owner), and "keep"
  // a look-alike of its own that is not one ("keep#x").
  for (const char* sub : {"drop#1", "keep#x", "rescope#2"}) {
    ASSERT_TRUE(idx->RegisterPublisher({.pod = sub, .ns = ns, .worker = 0}).ok());
  }
  index::PublisherId rescope = *idx->FindPublisher("rescope", 0);
  uint64_t epoch = idx->publisher_slot(rescope)->ingest.epoch;
  EXPECT_EQ(w.link_count(), 3u);

  Config next = cfg;
  next.publishers.erase(next.publishers.begin() + 1);  // "drop" leaves the file
  next.publishers[0].dialect = Dialect::kSglang;       // "keep" changes dialect
  next.publishers[1].private_engine_hashes = true;     // "rescope" changes hash scope
  ASSERT_TRUE(w.Reload(next).ok());
  EXPECT_FALSE(idx->FindPublisher("drop", 0).has_value());
  EXPECT_FALSE(idx->FindPublisher("drop#1", 0).has_value());  // its instance went with it
  EXPECT_TRUE(idx->FindPublisher("keep#x", 0).has_value());
  EXPECT_FALSE(idx->FindPublisher("rescope#2", 0).has_value());  // rebuilt with its endpoint
  EXPECT_EQ(w.link_count(), 2u);
  const index::PublisherSlot* r = idx->publisher_slot(rescope);
  EXPECT_EQ(r->index.pairs, 0u) << "entries mapped in the old scope survived";
  EXPECT_EQ(r->ingest.epoch, epoch + 1);
  EXPECT_EQ(r->id.flags & index::kPrivateEngineHashes, index::kPrivateEngineHashes);
  const index::PublisherSlot* k = idx->publisher_slot(*idx->FindPublisher("keep", 0));
  EXPECT_STREQ(k->id.dialect, "sglang");
  EXPECT_EQ(k->index.pairs, 1u);  // a dialect change relinks but keeps what is held
  EXPECT_EQ(idx->Dump().size(), 1u);
}

}  // namespace
}  // namespace kvidx::ingest
