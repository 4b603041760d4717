// Predictions end to end: a router announces prompts to pods over gRPC (Announce); lookups
// report the predicted blocks apart from the confirmed ones; the engine (an independent Python
// publisher, tests/integration/predict_peer.py) storing the prompt confirms its announcement,
// and an announcement nothing confirms expires. Stats reports precision and latency.
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

std::vector<uint32_t> Range(uint32_t from, uint32_t n) {
  std::vector<uint32_t> v(n);
  for (uint32_t i = 0; i < n; ++i) v[i] = from + i;
  return v;
}

v1::LookupQuery Query(const std::vector<uint32_t>& tokens, bool predictions) {
  v1::LookupQuery q;
  q.mutable_namespace_()->set_model("pm");
  for (uint32_t t : tokens) q.mutable_tokens()->add_ids(t);
  q.set_include_predictions(predictions);
  return q;
}

struct Seen {
  uint32_t matched, predicted;
  bool operator==(const Seen&) const = default;
};

TEST(PredictionsTest, AnnouncementsAreConfirmedByTheEngineOrExpireAndNeverChangeTheIndex) {
  const std::string dir = "/tmp/kvidx-pred-" + std::to_string(getpid());
  mkdir(dir.c_str(), 0755);
  const std::string segment = "kvidx-pred-" + std::to_string(getpid());
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
  Process peer(
      {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/predict_peer.py",
       dir + "/ports.txt", dir + "/go.txt", dir + "/done.txt"},
      dir + "/peer.log");
  std::istringstream ports(WaitForFile(dir + "/ports.txt", std::chrono::milliseconds(30000)));
  {
    std::ofstream cfg(dir + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment
        << "\"\nblocks = 4000\npairs = 8000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 1000\nreconnect_initial_ms = 100\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\nadmin_listen = \"off\"\n"
        << "prediction_ttl_ms = 60000\n"
        << "[[model]]\nname = \"pm\"\nblock_size = 4\n";
    std::string pod;
    int pub = 0, router = 0;
    while (ports >> pod >> pub >> router) {
      cfg << "[[publisher]]\npod = \"" << pod << "\"\nmodel = \"pm\"\ndialect = \"vllm\"\n"
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
  auto stub = v1::KvIndex::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port),
                                                       grpc::InsecureChannelCredentials()));
  auto lookup = [&](const std::vector<uint32_t>& tokens, bool predictions) {
    v1::LookupRequest req;
    *req.add_queries() = Query(tokens, predictions);
    grpc::ClientContext ctx;
    v1::LookupResponse resp;
    EXPECT_TRUE(stub->Lookup(&ctx, req, &resp).ok());
    std::map<std::string, Seen> out;
    for (const auto& m : resp.results(0).matches())
      out[m.pod()] = {m.matched_blocks(), m.predicted_blocks()};
    return out;
  };
  auto announce = [&](const std::vector<uint32_t>& tokens, const std::string& pod, int32_t rank,
                      uint32_t ttl_ms, v1::AnnounceResponse* resp) {
    v1::AnnounceRequest req;
    *req.mutable_query() = Query(tokens, false);
    req.mutable_pod()->set_pod(pod);
    req.mutable_pod()->set_dp_rank(rank);
    req.set_ttl_ms(ttl_ms);
    grpc::ClientContext ctx;
    return stub->Announce(&ctx, req, resp);
  };
  auto stats = [&] {
    grpc::ClientContext ctx;
    v1::StatsResponse s;
    EXPECT_TRUE(stub->Stats(&ctx, {}, &s).ok());
    return s;
  };
  using Pods = std::map<std::string, Seen>;
  const auto W = Range(100, 8), X = Range(1, 12), Y = Range(500, 12);
  ASSERT_TRUE(WaitFor(
      [&] {
        return lookup(W, false) == Pods{{"a", {2, 0}}};
      },
      std::chrono::milliseconds(20000)))
      << worker.Log();

  // W is held by a already: nothing to predict. X is predicted for a, Y for b (short-lived).
  v1::AnnounceResponse r;
  ASSERT_TRUE(announce(W, "a", 0, 0, &r).ok());
  EXPECT_EQ(r.prompt_blocks(), 2u);
  EXPECT_EQ(r.already_held(), 2u);
  EXPECT_EQ(r.predicted_blocks(), 0u);
  ASSERT_TRUE(announce(X, "a", 0, 0, &r).ok());
  EXPECT_EQ(r.predicted_blocks(), 3u);
  ASSERT_TRUE(announce(Y, "b", 0, 300, &r).ok());
  EXPECT_EQ(r.predicted_blocks(), 3u);
  // Predictions are reported apart, and only when asked for; confirmed answers are unchanged.
  EXPECT_EQ(lookup(X, true), (Pods{{"a", {0, 3}}}));
  EXPECT_EQ(lookup(X, false), Pods{});
  EXPECT_EQ(lookup(W, true), (Pods{{"a", {2, 0}}}));
  // Nothing confirms Y: it expires.
  ASSERT_TRUE(WaitFor([&] { return stats().predictions_expired() == 1; },
                      std::chrono::milliseconds(10000)));
  EXPECT_EQ(lookup(Y, true), Pods{});
  // The engine stores X: its announcement is confirmed, and the lookup sees it as matched.
  { std::ofstream(dir + "/go.txt") << "go\n"; }
  ASSERT_TRUE(WaitFor([&] { return stats().predictions_confirmed() == 1; },
                      std::chrono::milliseconds(20000)))
      << worker.Log();
  EXPECT_EQ(lookup(X, true), (Pods{{"a", {3, 0}}}));
  v1::StatsResponse s = stats();
  EXPECT_EQ(s.announcements(), 2u);
  EXPECT_EQ(s.announced_blocks(), 6u);
  EXPECT_EQ(s.confirmed_blocks(), 3u);
  EXPECT_DOUBLE_EQ(s.prediction_precision(), 0.5);
  EXPECT_EQ(s.predicted_blocks_live(), 0u);
  EXPECT_GT(s.confirm_latency_p50_ms(), 0.0);
  // Refusals: an announcement names one publisher, and a known one.
  EXPECT_EQ(announce(X, "a", -1, 0, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(announce(X, "nobody", 0, 0, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  for (Process* p : {&query, &worker, &peer}) p->Signal(SIGTERM);
  for (Process* p : {&query, &worker, &peer}) p->Wait();
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
}

}  // namespace
}  // namespace kvidx::testing
