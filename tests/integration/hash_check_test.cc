// The engine-hash cross-check end to end: an independent Python publisher
// (tests/integration/hash_peer.py) runs one engine that hashes as vLLM's sha256_cbor with
// PYTHONHASHSEED=0 and one that hashes with another seed; kvidx is configured with seed "0".
// The real kvidx-ingest recomputes the hashes, kvidx-query reports the counts (Stats, Pod
// counters) and kvidxctl pods warns about the wrong engine only.
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

TEST(HashCheckTest, AnEngineHashingOtherwiseIsCountedAndWarnedAbout) {
  const std::string dir = "/tmp/kvidx-hc-" + std::to_string(getpid());
  mkdir(dir.c_str(), 0755);
  const std::string segment = "kvidx-hc-" + std::to_string(getpid());
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
  Process peer(
      {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/hash_peer.py",
       dir + "/ports.txt", dir + "/done.txt"},
      dir + "/peer.log");
  std::istringstream ports(WaitForFile(dir + "/ports.txt", std::chrono::milliseconds(30000)));
  {
    std::ofstream cfg(dir + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment
        << "\"\nblocks = 4000\npairs = 8000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 1000\nreconnect_initial_ms = 100\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\nadmin_listen = \"off\"\n"
        << "[[model]]\nname = \"hm\"\nblock_size = 4\nengine_hash = \"sha256_cbor\"\n"
        << "engine_hash_seed = \"0\"\nhash_check_every = 1\n";
    std::string pod;
    int pub = 0, router = 0;
    while (ports >> pod >> pub >> router) {
      cfg << "[[publisher]]\npod = \"" << pod << "\"\nmodel = \"hm\"\ndialect = \"vllm\"\n"
          << "endpoint = \"tcp://127.0.0.1:" << pub
          << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << router << "\"\n";
    }
  }
  Process worker({BuildPath("ingest/kvidx-ingest"), "--config", dir + "/kvidx.toml"},
                 dir + "/worker.log");
  Process query({BuildPath("query/kvidx-query"), "--config", dir + "/kvidx.toml", "--port-file",
                 dir + "/query.port"},
                dir + "/query.log");
  std::istringstream port(WaitForFile(dir + "/query.port", std::chrono::milliseconds(30000)));
  int grpc_port = 0;
  port >> grpc_port;
  ASSERT_NE(grpc_port, 0) << query.Log();
  const std::string addr = "127.0.0.1:" + std::to_string(grpc_port);
  auto stub = v1::KvIndex::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  ASSERT_FALSE(WaitForFile(dir + "/done.txt", std::chrono::milliseconds(60000)).empty())
      << peer.Log();
  // good: 5 prompts x (2 + 1 continuation) blocks checked, none differ; bad: the first block of
  // each prompt differs, and its continuation cannot be checked (no digest to chain from).
  v1::StatsResponse stats;
  bool counted = WaitFor(
      [&] {
        grpc::ClientContext ctx;
        return stub->Stats(&ctx, {}, &stats).ok() && stats.hash_checks() >= 20;
      },
      std::chrono::milliseconds(20000));
  ASSERT_TRUE(counted) << stats.hash_checks() << " checks\n" << worker.Log();
  EXPECT_EQ(stats.hash_checks(), 20u);
  EXPECT_EQ(stats.hash_mismatches(), 5u);
  auto pod = [&](const std::string& name) {
    v1::GetPodRequest req;
    req.set_pod(name);
    grpc::ClientContext ctx;
    v1::Pod p;
    EXPECT_TRUE(stub->GetPod(&ctx, req, &p).ok());
    return p;
  };
  v1::Pod good = pod("good"), bad = pod("bad");
  EXPECT_EQ(good.counters().at("hash_checks"), 15u);
  EXPECT_EQ(good.counters().at("hash_mismatches"), 0u);
  EXPECT_EQ(bad.counters().at("hash_checks"), 5u);
  EXPECT_EQ(bad.counters().at("hash_mismatches"), 5u);
  EXPECT_NE(bad.counters().at("last_hash_mismatch"), 0u);
  // Both engines' blocks are indexed all the same: the check warns, it does not refuse.
  EXPECT_EQ(good.pairs(), 15u);
  EXPECT_EQ(bad.pairs(), 15u);
  // kvidxctl pods names the wrong engine, and only it.
  Process ctl({BuildPath("tools/kvidxctl"), "--server", addr, "pods"}, dir + "/ctl.log");
  EXPECT_EQ(ctl.Wait(), 0);
  const std::string out = ctl.Log();
  EXPECT_NE(out.find("warning: bad/0: 5 of 5 recomputed block hashes differ"), std::string::npos)
      << out;
  EXPECT_EQ(out.find("warning: good/"), std::string::npos) << out;
  for (Process* p : {&query, &worker, &peer}) p->Signal(SIGTERM);
  for (Process* p : {&query, &worker, &peer}) p->Wait();
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
}

}  // namespace
}  // namespace kvidx::testing
