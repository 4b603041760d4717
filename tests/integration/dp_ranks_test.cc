// Data-parallel ranks end to end: kvidx-sim publishes two pods of two ranks each (--dp 2); the
// ranks of one pod are owned by two different kvidx-ingest workers; a real kvidx-query answers
// lookups per rank and clears a pod's ranks on the workers that own them.
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "config/config.h"
#include "control/control_area.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

std::pair<std::string, uint32_t> Id(const std::string& pod, uint32_t rank) { return {pod, rank}; }

class DpRanksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/kvidx-dp-" + std::to_string(getpid());
    mkdir(dir_.c_str(), 0755);
    segment_ = "kvidx-dp-" + std::to_string(getpid());
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
    // A pod prefix whose first pod has its two ranks on different workers of two.
    for (char c = 'a'; c <= 'z'; ++c) {
      prefix_ = std::string("dp") + c + "-";
      if (config::OwnerWorker(prefix_ + "0", 0, 2) != config::OwnerWorker(prefix_ + "0", 1, 2))
        break;
    }
    pod0_ = prefix_ + "0";
    pod1_ = prefix_ + "1";
    sim_ = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("tools/kvidx-sim"), "--pods", "2", "--dp", "2",
                                 "--base-port", "0", "--requests", "1000000", "--rate", "100",
                                 "--cache-blocks", "100000", "--model", "dpm", "--pod-prefix",
                                 prefix_, "--config-out", dir_ + "/sim.toml"},
        dir_ + "/sim.log");
    std::string fleet = WaitForFile(dir_ + "/sim.toml", std::chrono::milliseconds(10000));
    ASSERT_FALSE(fleet.empty()) << sim_->Log();
    std::ofstream cfg(dir_ + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment_
        << "\"\nblocks = 50000\npairs = 200000\npublishers = 16\nnamespaces = 4\nstripes = 32\n"
        << "[ingest]\nworkers = 2\nreconnect_initial_ms = 100\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\nadmin_listen = \"unix:"
        << dir_ << "/admin.sock\"\n\n"
        << fleet;
    cfg.close();
    for (int w = 0; w < 2; ++w) {
      workers_.push_back(std::make_unique<Process>(
          std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config",
                                   dir_ + "/kvidx.toml", "--worker", std::to_string(w)},
          dir_ + "/w" + std::to_string(w) + ".log"));
    }
    query_ = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("query/kvidx-query"), "--config", dir_ + "/kvidx.toml",
                                 "--port-file", dir_ + "/query.port"},
        dir_ + "/query.log");
    std::istringstream port(WaitForFile(dir_ + "/query.port", std::chrono::milliseconds(30000)));
    int grpc_port = 0;
    port >> grpc_port;
    ASSERT_NE(grpc_port, 0) << query_->Log();
    stub_ = v1::KvIndex::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port),
                                                     grpc::InsecureChannelCredentials()));
    admin_ = v1::KvIndex::NewStub(
        grpc::CreateChannel("unix:" + dir_ + "/admin.sock", grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    std::vector<Process*> all = {query_.get(), sim_.get()};
    for (auto& w : workers_) all.push_back(w.get());
    for (Process* p : all) {
      if (p != nullptr) p->Signal(SIGTERM);
    }
    for (Process* p : all) {
      if (p != nullptr) p->Wait();
    }
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
  }

  // (pod, rank) -> the publisher's slot counter `clears`, or -1 if it is not there.
  std::map<std::pair<std::string, uint32_t>, int64_t> Clears() {
    std::map<std::pair<std::string, uint32_t>, int64_t> out;
    auto seg = index::Segment::Attach(segment_, index::Segment::Access::kReadOnly);
    if (!seg.ok()) return out;
    index::PrefixIndex idx(seg->get());
    for (const std::string& pod : {pod0_, pod1_}) {
      for (uint32_t r = 0; r < 2; ++r) {
        auto id = idx.FindPublisher(pod, r);
        out[{pod, r}] = id ? static_cast<int64_t>(idx.publisher_slot(*id)->index.clears) : -1;
      }
    }
    return out;
  }
  v1::ClearResponse ClearPod(const std::string& pod, int32_t rank, grpc::Status* st) {
    v1::ClearRequest req;
    req.mutable_pod()->set_pod(pod);
    req.mutable_pod()->set_dp_rank(rank);
    grpc::ClientContext ctx;
    v1::ClearResponse resp;
    *st = admin_->Clear(&ctx, req, &resp);
    return resp;
  }

  std::string dir_, segment_, prefix_, pod0_, pod1_;
  std::unique_ptr<Process> sim_, query_;
  std::vector<std::unique_ptr<Process>> workers_;
  std::unique_ptr<v1::KvIndex::Stub> stub_, admin_;
};

TEST_F(DpRanksTest, LookupsAnswerPerRankAndClearReachesEveryRanksWorker) {
  ASSERT_NE(config::OwnerWorker(pod0_, 0, 2), config::OwnerWorker(pod0_, 1, 2));
  // Four publishers, each with blocks, and the ranks of pod 0 on two workers.
  std::map<std::pair<std::string, uint32_t>, v1::Pod> pods;
  bool all = WaitFor(
      [&] {
        grpc::ClientContext ctx;
        v1::ListPodsResponse list;
        if (!stub_->ListPods(&ctx, {}, &list).ok()) return false;
        pods.clear();
        for (const auto& p : list.pods()) {
          if (p.pairs() > 0) pods[{p.pod(), p.dp_rank()}] = p;
        }
        return pods.size() == 4;
      },
      std::chrono::milliseconds(30000));
  ASSERT_TRUE(all) << pods.size() << " publishers with blocks\n" << workers_[0]->Log();
  EXPECT_NE(pods[Id(pod0_, 0)].worker(), pods[Id(pod0_, 1)].worker());

  // A block pod 0's rank 1 holds and its rank 0 does not: the answer names rank 1 alone, and
  // candidates narrowed to rank 0 find nothing.
  uint64_t key = 0;
  {
    auto seg = index::Segment::Attach(segment_, index::Segment::Access::kReadOnly);
    ASSERT_TRUE(seg.ok());
    index::PrefixIndex idx(seg->get());
    const auto r0 = idx.FindPublisher(pod0_, 0), r1 = idx.FindPublisher(pod0_, 1);
    ASSERT_TRUE(r0 && r1);
    std::map<uint64_t, std::set<index::PublisherId>> holders;
    for (const auto& e : idx.Dump()) holders[e.key].insert(e.holder.publisher);
    for (const auto& [k, who] : holders) {
      if (who.count(*r1) && !who.count(*r0)) key = k;
    }
  }
  ASSERT_NE(key, 0u) << "no block of rank 1 that rank 0 lacks";
  auto lookup = [&](int32_t only_rank) {
    v1::LookupRequest req;
    v1::LookupQuery* q = req.add_queries();
    q->mutable_namespace_()->set_model("dpm");
    q->mutable_block_keys()->add_keys(key);
    if (only_rank >= -1) {
      v1::PodRef* c = q->add_candidates();
      c->set_pod(pod0_);
      c->set_dp_rank(only_rank);
    }
    grpc::ClientContext ctx;
    v1::LookupResponse resp;
    EXPECT_TRUE(stub_->Lookup(&ctx, req, &resp).ok());
    std::set<std::pair<std::string, uint32_t>> out;
    for (const auto& m : resp.results(0).matches()) out.insert({m.pod(), m.dp_rank()});
    return out;
  };
  std::set<std::pair<std::string, uint32_t>> any = lookup(-2);
  EXPECT_TRUE(any.count({pod0_, 1}));
  EXPECT_FALSE(any.count({pod0_, 0}));
  EXPECT_EQ(lookup(0), (std::set<std::pair<std::string, uint32_t>>{}));
  EXPECT_EQ(lookup(1), (std::set<std::pair<std::string, uint32_t>>{{pod0_, 1}}));
  EXPECT_EQ(lookup(-1), (std::set<std::pair<std::string, uint32_t>>{{pod0_, 1}}));

  // Clear one rank: only that publisher is cleared.
  auto before = Clears();
  grpc::Status st;
  v1::ClearResponse one = ClearPod(pod0_, 1, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(one.publishers_cleared(), 1u);
  auto after = Clears();
  EXPECT_EQ(after[Id(pod0_, 1)], before[Id(pod0_, 1)] + 1);
  EXPECT_EQ(after[Id(pod0_, 0)], before[Id(pod0_, 0)]);
  EXPECT_EQ(after[Id(pod1_, 0)], before[Id(pod1_, 0)]);
  EXPECT_EQ(after[Id(pod1_, 1)], before[Id(pod1_, 1)]);
  // Clear the pod (every rank): both ranks, each on its own worker; pod 1 untouched.
  v1::ClearResponse both = ClearPod(pod0_, -1, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(both.publishers_cleared(), 2u);
  auto last = Clears();
  EXPECT_EQ(last[Id(pod0_, 0)], after[Id(pod0_, 0)] + 1);
  EXPECT_EQ(last[Id(pod0_, 1)], after[Id(pod0_, 1)] + 1);
  EXPECT_EQ(last[Id(pod1_, 0)], after[Id(pod1_, 0)]);
  EXPECT_EQ(last[Id(pod1_, 1)], after[Id(pod1_, 1)]);
  // A rank that does not exist is an unknown pod.
  ClearPod(pod0_, 5, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace kvidx::testing
