// kvidx-query as a real process, over a real index fed by kvidx-sim and two kvidx-ingest
// workers, called through gRPC on loopback: every RPC, its error codes, the WatchEvents
// stream, and the read-only mapping of the index.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/block_key.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

using v1::KvIndex;

struct Env {
  std::string dir, segment, config, grpc_addr, admin_addr;
  int metrics_port = 0;
  std::unique_ptr<Process> sim, w0, w1, query;
  std::unique_ptr<KvIndex::Stub> stub;        // the router listener
  std::unique_ptr<KvIndex::Stub> admin_stub;  // the admin unix socket
  std::vector<std::vector<uint32_t>> prompts;
};
Env* env = nullptr;

class QueryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    env = new Env;
    env->dir = "/tmp/kvidx-query-" + std::to_string(getpid());
    mkdir(env->dir.c_str(), 0755);
    env->segment = "kvidx-query-" + std::to_string(getpid());
    index::Segment::Remove(env->segment);
    control::ControlArea::Remove(control::ControlName(env->segment));
    env->sim = std::make_unique<Process>(
        std::vector<std::string>{
            BuildPath("tools/kvidx-sim"), "--pods", "4", "--base-port", "0", "--requests", "100000",
            "--rate", "150", "--cache-blocks", "500", "--config-out", env->dir + "/sim.toml",
            "--prompts-out", env->dir + "/prompts.txt", "--model", "qm", "--start-delay-ms", "300"},
        env->dir + "/sim.log");
    WaitFor([] { return access((env->dir + "/sim.toml").c_str(), R_OK) == 0; },
            std::chrono::milliseconds(5000));
    std::ifstream in(env->dir + "/sim.toml");
    std::stringstream ss;
    ss << in.rdbuf();
    env->config = env->dir + "/kvidx.toml";
    env->admin_addr = "unix:" + env->dir + "/admin.sock";
    std::ofstream out(env->config);
    out << "[segment]\nname = \"" << env->segment
        << "\"\nblocks = 100000\npairs = 400000\npublishers = 32\nnamespaces = 8\nstripes = 64\n"
        << "[ingest]\nworkers = 2\nreconnect_initial_ms = 100\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n"
        << "admin_listen = \"" << env->admin_addr << "\"\n"
        << "max_tokens = 4096\nmax_lookups_per_call = 256\nmax_watch_streams = 2\n"
        << "max_request_bytes = 1048576\n\n"
        << "[[model]]\nname = \"qm4\"\nblock_size = 4\n\n"  // the sequence-id peer's
        << ss.str();
    out.close();
    env->w0 = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", env->config,
                                 "--worker", "0"},
        env->dir + "/w0.log");
    env->w1 = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", env->config,
                                 "--worker", "1"},
        env->dir + "/w1.log");
    env->query = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("query/kvidx-query"), "--config", env->config,
                                 "--port-file", env->dir + "/query.port"},
        env->dir + "/query.log");
    std::string port = WaitForFile(env->dir + "/query.port", std::chrono::milliseconds(30000));
    ASSERT_FALSE(port.empty()) << env->query->Log();
    std::istringstream ports(port);
    int grpc_port = 0;
    ports >> grpc_port >> env->metrics_port;
    env->grpc_addr = "127.0.0.1:" + std::to_string(grpc_port);
    env->stub =
        KvIndex::NewStub(grpc::CreateChannel(env->grpc_addr, grpc::InsecureChannelCredentials()));
    env->admin_stub =
        KvIndex::NewStub(grpc::CreateChannel(env->admin_addr, grpc::InsecureChannelCredentials()));
    // Wait until the server answers and the index has content and sample prompts exist.
    WaitFor(
        [] {
          grpc::ClientContext ctx;
          v1::StatsResponse s;
          return env->stub->Stats(&ctx, {}, &s).ok() && s.blocks() > 200 && s.publishers() == 4;
        },
        std::chrono::milliseconds(20000));
    std::ifstream pin(env->dir + "/prompts.txt");
    std::string line;
    while (std::getline(pin, line)) {
      std::vector<uint32_t> t;
      std::stringstream ls(line);
      std::string tok;
      while (std::getline(ls, tok, ',')) t.push_back(std::stoul(tok));
      env->prompts.push_back(t);
    }
  }
  static void TearDownTestSuite() {
    for (auto* p : {env->query.get(), env->w0.get(), env->w1.get(), env->sim.get()})
      p->Signal(SIGTERM);
    for (auto* p : {env->query.get(), env->w0.get(), env->w1.get(), env->sim.get()}) p->Wait();
    index::Segment::Remove(env->segment);
    control::ControlArea::Remove(control::ControlName(env->segment));
    delete env;
  }

  static std::string Reason(const grpc::Status& st) {
    v1::ErrorDetail d;
    d.ParseFromString(st.error_details());
    return d.reason();
  }
  static uint32_t Code(const grpc::Status& st) {
    v1::ErrorDetail d;
    d.ParseFromString(st.error_details());
    return d.code();
  }
  KvIndex::Stub& stub() { return *env->stub; }
  KvIndex::Stub& admin() { return *env->admin_stub; }
};

v1::LookupQuery TokensQuery(const std::vector<uint32_t>& t, const std::string& model = "qm") {
  v1::LookupQuery q;
  q.mutable_namespace_()->set_model(model);
  for (uint32_t x : t) q.mutable_tokens()->add_ids(x);
  return q;
}

// Runs kvidxctl with `args` against the test's server; returns its exit code and output.
std::pair<int, std::string> Ctl(std::vector<std::string> args, bool to_server = true) {
  static int n = 0;
  std::string log = env->dir + "/ctl-" + std::to_string(++n) + ".log";
  std::vector<std::string> argv{BuildPath("tools/kvidxctl")};
  argv.insert(argv.end(), args.begin(), args.end());
  if (to_server) {
    argv.push_back("--server");
    argv.push_back(env->admin_addr);
  }
  Process p(argv, log);
  int st = p.Wait(std::chrono::milliseconds(20000));
  return {st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, p.Log()};
}

TEST_F(QueryTest, KvidxctlAnswersThroughTheRealServerAndRefusesBadArguments) {
  auto [rc, out] = Ctl({"status"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("publishers"), std::string::npos) << out;
  std::tie(rc, out) = Ctl({"--json", "pods"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"pod-"), std::string::npos) << out;
  ASSERT_FALSE(env->prompts.empty());
  std::string tokens;
  for (uint32_t t : env->prompts[0]) tokens += (tokens.empty() ? "" : ",") + std::to_string(t);
  std::tie(rc, out) = Ctl({"lookup", "--model", "qm", "--tokens", tokens});
  EXPECT_EQ(rc, 0) << out;
  std::tie(rc, out) = Ctl({"clear", "--pod", "no-such-pod", "--dp", "-1"});
  EXPECT_EQ(rc, 1) << out;  // answered: NOT_FOUND
  EXPECT_NE(out.find("UNKNOWN_POD"), std::string::npos) << out;
  std::tie(rc, out) = Ctl({"lookup", "--no-such-option", "1"});
  EXPECT_EQ(rc, 2) << out;
  std::tie(rc, out) = Ctl({"sequence", "only-a-pod"});
  EXPECT_EQ(rc, 2) << out;
  std::tie(rc, out) = Ctl({"ping", "--server", "127.0.0.1:1", "--timeout-ms", "500"}, false);
  EXPECT_EQ(rc, 3) << out;  // the server is not there: said so, exit 3
}

// Every kvidxctl command, in text and in JSON, against the real server: what each prints, and
// how each refuses (usage errors exit 2, refused calls 1 with the reason, no server 3).
TEST_F(QueryTest, KvidxctlEveryCommandInTextAndJson) {
  auto expect = [](const std::pair<int, std::string>& r, int rc, const std::string& has) {
    EXPECT_EQ(r.first, rc) << r.second;
    EXPECT_NE(r.second.find(has), std::string::npos) << "wanted '" << has << "' in\n" << r.second;
  };
  expect(Ctl({"status"}), 0, "worker 0:");
  expect(Ctl({"status"}), 0, " MiB budgeted, 0 refused, rss ");
  expect(Ctl({"status"}), 0, "healthy");
  expect(Ctl({"--json", "status"}), 0, "\"pair_capacity\"");
  expect(Ctl({"pods"}), 0, "LAST_SEQ");
  expect(Ctl({"pods"}), 0, "pod-0");
  expect(Ctl({"pod", "pod-0"}), 0, "pod-0/0  model qm");
  expect(Ctl({"pod", "pod-1", "--dp", "0"}), 0, "gaps");
  expect(Ctl({"--json", "pod", "pod-0"}), 0, "\"pod\": \"pod-0\"");
  expect(Ctl({"pod", "nobody"}), 1, "UNKNOWN_POD");
  expect(Ctl({"pod"}), 2, "name is required");
  expect(Ctl({"ping"}), 0, "pong from " + env->admin_addr);
  // The server from the configuration's admin_listen, not from --server.
  expect(Ctl({"--config", env->config, "ping"}), 0, "pong from " + env->admin_addr);
  expect(Ctl({"--help"}, false), 0, "Subcommands");

  ASSERT_FALSE(env->prompts.empty());
  std::string file = env->dir + "/ctl-tokens.txt";
  {
    std::ofstream t(file);
    t << "[";
    for (size_t i = 0; i < env->prompts[0].size(); ++i)
      t << (i ? ", " : "") << env->prompts[0][i] << (i % 16 == 15 ? "\n" : "");
    t << "]\n";
  }
  expect(Ctl({"lookup", "--model", "qm", "--tokens-file", file}), 0, "prompt: ");
  expect(Ctl({"lookup", "--model", "qm", "--tokens-file", file, "--candidates", "pod-0,pod-1",
              "--max-blocks", "4"}),
         0, "prompt: ");
  auto json = Ctl({"--json", "lookup", "--model", "qm", "--tokens-file", file});
  expect(json, 0, "\"prompt_blocks\"");
  // The same prompt by its block keys.
  uint32_t block_size = 0;
  {
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    *req.add_queries() = TokensQuery(env->prompts[0]);
    v1::LookupResponse r;
    ASSERT_TRUE(stub().Lookup(&ctx, req, &r).ok());
    block_size = r.results(0).block_size();
  }
  ASSERT_GT(block_size, 0u);
  auto keys = index::ChainBlockKeys(index::NamespaceRoot("qm", ""), env->prompts[0], block_size);
  ASSERT_FALSE(keys.empty());
  std::string hex;
  for (uint64_t k : keys) {
    char b[20];
    std::snprintf(b, sizeof b, "%s%016lx", hex.empty() ? "" : ",", static_cast<unsigned long>(k));
    hex += b;
  }
  expect(Ctl({"lookup", "--model", "qm", "--keys", hex}), 0,
         "prompt: " + std::to_string(keys.size()) + " blocks");
  expect(Ctl({"lookup", "--model", "no-such-model", "--tokens", "1,2,3"}), 0,
         "is unknown to kvidx");
  expect(Ctl({"lookup", "--model", "qm"}), 2, "missing or bad arguments");
  expect(Ctl({"lookup", "--tokens", "1,2"}), 1, "NO_MODEL");

  // watch: events as they are applied, in text and JSON; the sim keeps publishing.
  auto w = Ctl({"watch", "--count", "3"});
  EXPECT_EQ(w.first, 0) << w.second;
  EXPECT_TRUE(w.second.find("stored") != std::string::npos ||
              w.second.find("removed") != std::string::npos)
      << w.second;
  expect(Ctl({"--json", "watch", "--count", "2", "--stats-ms", "1000"}), 0, "{");

  // register / unregister / clear, and their refusals.
  expect(Ctl({"register", "--pod", "ctl-pod", "--model", "qm", "--endpoint", "tcp://127.0.0.1:9",
              "--dialect", "vllm"}),
         0, "registered ctl-pod/0");
  expect(Ctl({"--json", "pod", "ctl-pod"}), 0, "\"endpoint\": \"tcp://127.0.0.1:9\"");
  // Registering again updates the publisher in place.
  expect(Ctl({"register", "--pod", "ctl-pod", "--model", "qm", "--endpoint", "tcp://127.0.0.1:7",
              "--topic", "kv"}),
         0, "registered ctl-pod/0");
  expect(Ctl({"pod", "ctl-pod"}), 0, "endpoint tcp://127.0.0.1:7  replay -  topic 'kv'");
  expect(Ctl({"--json", "clear", "--pod", "ctl-pod"}), 0, "\"publishers_cleared\": 1");
  expect(Ctl({"unregister", "--pod", "ctl-pod"}), 0, "unregistered ctl-pod, dropped 0 pairs");
  expect(Ctl({"--json", "unregister", "--pod", "ctl-pod"}), 1, "UNKNOWN_POD");
  expect(
      Ctl({"register", "--pod", "b", "--model", "qm", "--endpoint", "tcp://127.0.0.1:9", "--bind"}),
      1, "BIND_NOT_ALLOWED");
  expect(Ctl({"clear", "--model", "no-such-model"}), 1, "");
  expect(Ctl({"clear"}), 2, "missing or bad arguments");
  expect(Ctl({"sequences", "nobody"}), 1, "UNKNOWN_POD");
  expect(Ctl({"sequence", "nobody", "7"}), 1, "UNKNOWN_POD");
  expect(Ctl({"ping", "--tls-ca", env->dir + "/no-such-ca.pem"}), 2, "cannot read");
}

std::string Scrape(int port);  // GET /metrics (below)

// Issue 10: two surfaces. The router listener answers reads and refuses every call that
// changes state, with the reason; the admin unix socket (mode 0660) serves them, and kvidxctl
// finds it through the configuration.
TEST_F(QueryTest, AdminCallsAreRefusedOnTheRouterListenerAndServedOnTheAdminSocket) {
  v1::ClearRequest clear;
  clear.mutable_pod()->set_pod("no-such-pod");
  clear.mutable_pod()->set_dp_rank(0);
  v1::ClearResponse cr;
  v1::RegisterPublisherRequest reg;
  reg.set_pod("intruder");
  reg.set_model("qm");
  reg.set_endpoint("tcp://127.0.0.1:9");
  v1::Pod pod;
  v1::UnregisterPublisherRequest un;
  un.set_pod("pod-0");
  v1::UnregisterPublisherResponse ur;
  std::vector<grpc::Status> refused;
  {
    grpc::ClientContext ctx;
    refused.push_back(stub().Clear(&ctx, clear, &cr));
  }
  {
    grpc::ClientContext ctx;
    refused.push_back(stub().RegisterPublisher(&ctx, reg, &pod));
  }
  {
    grpc::ClientContext ctx;
    refused.push_back(stub().UnregisterPublisher(&ctx, un, &ur));
  }
  for (const grpc::Status& st : refused) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_EQ(Reason(st), "ADMIN_ONLY");
    EXPECT_NE(st.error_message().find(env->admin_addr), std::string::npos) << st.error_message();
  }
  // Nothing changed: pod-0 is still there, the intruder was never registered.
  v1::ListPodsResponse pods;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub().ListPods(&ctx, {}, &pods).ok());
  }
  bool pod0 = false;
  for (const auto& p : pods.pods()) {
    EXPECT_NE(p.pod(), "intruder");
    pod0 |= p.pod() == "pod-0";
  }
  EXPECT_TRUE(pod0);
  // The admin socket answers the same call (NOT_FOUND: it reached the workers).
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(admin().Clear(&ctx, clear, &cr).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  struct stat st {};
  ASSERT_EQ(stat((env->dir + "/admin.sock").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // kvidxctl: refused with the reason on the router listener; through the configuration it
  // finds the admin socket.
  auto [rc, out] = Ctl({"--server", env->grpc_addr, "clear", "--pod", "x"}, false);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("ADMIN_ONLY"), std::string::npos) << out;
  std::tie(rc, out) = Ctl({"--config", env->config, "clear", "--pod", "x"}, false);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("UNKNOWN_POD"), std::string::npos) << out;
  // The refusals are counted.
  std::string metrics = Scrape(env->metrics_port);
  EXPECT_NE(metrics.find("kvidx_permission_denied_total"), std::string::npos);
  EXPECT_EQ(metrics.find("kvidx_permission_denied_total 0\n"), std::string::npos);
  // The predictions' and the engine-hash check's families are exported (0 here: nothing
  // announced, no model with engine_hash).
  for (const char* family :
       {"kvidx_announcements_total 0\n", "kvidx_prediction_precision_ratio",
        "kvidx_engine_hash_checks_total 0\n", "kvidx_engine_hash_mismatches_total 0\n",
        "kvidx_kvbm_instances 0\n", "kvidx_kvbm_refused_total 0\n"}) {
    EXPECT_NE(metrics.find(family), std::string::npos) << family;
  }
}

TEST_F(QueryTest, LookupByTokensAndByBlockKeysAgree) {
  ASSERT_FALSE(env->prompts.empty()) << env->sim->Log();
  int hits = 0;
  for (const auto& p : env->prompts) {
    v1::LookupRequest req;
    *req.add_queries() = TokensQuery(p);
    v1::LookupQuery* by_keys = req.add_queries();
    by_keys->mutable_namespace_()->set_model("qm");
    for (auto k : index::ChainBlockKeys(index::NamespaceRoot("qm", ""), p, 16)) {
      by_keys->mutable_block_keys()->add_keys(k);
    }
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub().Lookup(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.results_size(), 2);
    const auto& a = resp.results(0);
    EXPECT_TRUE(a.namespace_known());
    EXPECT_EQ(a.prompt_blocks(), p.size() / 16);
    EXPECT_EQ(a.block_size(), 16u);
    hits += a.matches_size() > 0;
    for (const auto& m : a.matches()) {
      EXPECT_LE(m.matched_blocks(), a.prompt_blocks());
      EXPECT_EQ(m.matched_tokens(), m.matched_blocks() * 16ull);
      EXPECT_EQ(m.pod().rfind("pod-", 0), 0u);
      EXPECT_TRUE(m.freshness().connected());
    }
    if (a.matches_size() > 0) {
      EXPECT_EQ(a.best().matched_blocks(), a.matches(0).matched_blocks());
    }
    // The key-based query may see a slightly newer index; both must see the same pods at least
    // for the first block most of the time, so compare only structure here.
    EXPECT_EQ(resp.results(1).prompt_blocks(), a.prompt_blocks());
  }
  EXPECT_GT(hits, 0);
}

TEST_F(QueryTest, BatchedLookupsAndCandidates) {
  ASSERT_FALSE(env->prompts.empty());
  v1::LookupRequest req;
  for (int i = 0; i < 200; ++i)
    *req.add_queries() = TokensQuery(env->prompts[i % env->prompts.size()]);
  auto* only = req.mutable_queries(0)->add_candidates();
  only->set_pod("pod-1");
  only->set_dp_rank(-1);
  auto* ghost = req.mutable_queries(1)->add_candidates();
  ghost->set_pod("no-such-pod");
  v1::LookupResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub().Lookup(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.results_size(), 200);
  for (const auto& m : resp.results(0).matches()) EXPECT_EQ(m.pod(), "pod-1");
  EXPECT_EQ(resp.results(1).matches_size(), 0);  // unknown pod: an answer, not an error
}

TEST_F(QueryTest, UnknownNamespaceAndMissAreAnswers) {
  v1::LookupRequest req;
  *req.add_queries() = TokensQuery({1, 2, 3}, "no-such-model");
  std::vector<uint32_t> miss(64);
  for (uint32_t i = 0; i < 64; ++i) miss[i] = 7 + i;
  *req.add_queries() = TokensQuery(miss);
  v1::LookupResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub().Lookup(&ctx, req, &resp).ok());
  EXPECT_FALSE(resp.results(0).namespace_known());
  EXPECT_EQ(resp.results(0).matches_size(), 0);
  EXPECT_TRUE(resp.results(1).namespace_known());
  EXPECT_EQ(resp.results(1).matches_size(), 0);
  EXPECT_FALSE(resp.results(1).has_best());
}

TEST_F(QueryTest, BadInputIsInvalidArgumentWithAReason) {
  {
    // More candidates than the segment can hold publishers (32 here): refused before any
    // matching (issue 10: limits before work).
    v1::LookupRequest req;
    v1::LookupQuery* q = req.add_queries();
    *q = TokensQuery({1, 2, 3, 4});
    for (int i = 0; i < 33; ++i) q->add_candidates()->set_pod("pod-" + std::to_string(i));
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = stub().Lookup(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(Reason(st), "TOO_MANY_CANDIDATES");
  }
  {
    std::vector<uint32_t> huge(1'000'000, 5);  // a million tokens
    v1::LookupRequest req;
    *req.add_queries() = TokensQuery(huge);
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = stub().Lookup(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(Reason(st), "TOO_MANY_TOKENS");
  }
  {
    v1::LookupRequest req;
    req.add_queries()->mutable_namespace_()->set_model("qm");  // no input
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = stub().Lookup(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(Reason(st), "NO_INPUT");
  }
  {
    v1::LookupRequest req;
    for (int i = 0; i < 300; ++i) *req.add_queries() = TokensQuery({1});
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = stub().Lookup(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(Reason(st), "TOO_MANY_QUERIES");
  }
  {
    v1::LookupRequest req;
    *req.add_queries() = TokensQuery({1}, "");
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    EXPECT_EQ(stub().Lookup(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // The server is still up.
  grpc::ClientContext ctx;
  v1::PingResponse pong;
  EXPECT_TRUE(stub().Ping(&ctx, {}, &pong).ok());
}

TEST_F(QueryTest, StatsPodsAndGetPod) {
  v1::StatsResponse s;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub().Stats(&ctx, {}, &s).ok());
  }
  EXPECT_TRUE(s.enabled());
  EXPECT_TRUE(s.healthy());
  EXPECT_EQ(s.publishers(), 4u);
  EXPECT_GT(s.blocks(), 0u);
  EXPECT_GE(s.pairs(), s.blocks());
  // Tokens are counted in whole 16-token blocks. (Not compared with pairs: the workers apply
  // batches while Stats reads, and the two figures come from different counters.)
  EXPECT_GT(s.tokens(), 0u);
  EXPECT_EQ(s.tokens() % 16, 0u);
  EXPECT_GT(s.batches_applied(), 0u);
  EXPECT_EQ(s.workers_size(), 2);
  for (const auto& w : s.workers()) {
    // Budgets (defaults: queue 512 MiB + replay buffer 64 MiB + sequence table 64 MiB per
    // publisher), what the worker uses of them, and its resident set from /proc.
    EXPECT_EQ(w.budget_bytes(), uint64_t{w.publishers()} * (640u << 20)) << w.worker();
    EXPECT_LE(w.budget_used_bytes(), w.budget_bytes());
    EXPECT_EQ(w.budget_drops(), 0u);
    EXPECT_GT(w.rss_bytes(), 1u << 20);
  }
  EXPECT_TRUE(s.events_rejected().contains("malformed"));
  v1::ListPodsResponse pods;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub().ListPods(&ctx, {}, &pods).ok());
  }
  ASSERT_EQ(pods.pods_size(), 4);
  for (const auto& p : pods.pods()) {
    EXPECT_EQ(p.model(), "qm");
    EXPECT_GT(p.counters().at("batches"), 0u);
    EXPECT_TRUE(p.counters().contains("budget_drops"));
    EXPECT_TRUE(p.counters().contains("buffered_bytes"));
    EXPECT_TRUE(p.counters().contains("sequence_bytes"));
  }
  v1::GetPodRequest req;
  req.set_pod("pod-2");
  v1::Pod pod;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub().GetPod(&ctx, req, &pod).ok());
  }
  EXPECT_EQ(pod.pod(), "pod-2");
  EXPECT_TRUE(pod.has_seq());
  req.set_pod("nobody");
  grpc::ClientContext ctx;
  grpc::Status st = stub().GetPod(&ctx, req, &pod);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Reason(st), "UNKNOWN_POD");
  EXPECT_EQ(Code(st), 0u);  // no AIBrix code means the same
}

TEST_F(QueryTest, WatchEventsSeesEventsAppliedAfterItStarted) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::WatchEventsRequest req;
  req.set_stats_interval_ms(200);
  auto reader = stub().WatchEvents(&ctx, req);
  int64_t started = std::chrono::system_clock::now().time_since_epoch().count();
  v1::WatchEvent ev;
  int applied = 0, stats = 0;
  while ((applied < 5 || stats < 1) && reader->Read(&ev)) {
    if (ev.has_applied()) {
      ++applied;
      EXPECT_GE(ev.applied().wall_time_ns(), started - 50'000'000);  // not history
      EXPECT_EQ(ev.applied().pod().rfind("pod-", 0), 0u);
      EXPECT_EQ(ev.applied().model(), "qm");
      EXPECT_NE(ev.applied().kind(), v1::AppliedEvent::KIND_UNSPECIFIED);
    }
    if (ev.has_stats()) ++stats;
  }
  ctx.TryCancel();
  EXPECT_GE(applied, 5);
  EXPECT_GE(stats, 1);
}

TEST_F(QueryTest, RegisterClearAndUnregisterThroughTheWorkers) {
  // A second simulated engine that kvidx does not know yet.
  Process extra({BuildPath("tools/kvidx-sim"), "--pods", "1", "--pod-prefix", "extra-",
                 "--base-port", "0", "--requests", "100000", "--rate", "100", "--model", "qm",
                 "--start-delay-ms", "100", "--config-out", env->dir + "/extra.toml"},
                env->dir + "/extra.log");
  std::string extra_toml = WaitForFile(env->dir + "/extra.toml", std::chrono::milliseconds(30000));
  ASSERT_FALSE(extra_toml.empty()) << extra.Log();
  v1::RegisterPublisherRequest reg;
  reg.set_pod("extra-0");
  reg.set_model("qm");
  reg.set_endpoint(TomlString(extra_toml, "endpoint"));
  reg.set_replay_endpoint(TomlString(extra_toml, "replay_endpoint"));
  reg.set_topic("kv-events");
  reg.set_dialect("vllm");
  v1::Pod pod;
  {
    grpc::ClientContext ctx;
    grpc::Status st = admin().RegisterPublisher(&ctx, reg, &pod);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(pod.pod(), "extra-0");
  // Its blocks arrive through the owning worker.
  v1::GetPodRequest get;
  get.set_pod("extra-0");
  EXPECT_TRUE(WaitFor(
      [&] {
        grpc::ClientContext ctx;
        return stub().GetPod(&ctx, get, &pod).ok() && pod.pairs() > 0;
      },
      std::chrono::milliseconds(10000)));
  // Registering for an unconfigured model is refused by the worker.
  reg.set_pod("extra-9");
  reg.set_model("unconfigured");
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(admin().RegisterPublisher(&ctx, reg, &pod).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  // Clear one pod.
  v1::ClearRequest clear;
  clear.mutable_pod()->set_pod("pod-0");
  clear.mutable_pod()->set_dp_rank(-1);
  v1::ClearResponse cr;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(admin().Clear(&ctx, clear, &cr).ok());
  }
  EXPECT_EQ(cr.publishers_cleared(), 1u);
  clear.mutable_pod()->set_pod("nobody");
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(admin().Clear(&ctx, clear, &cr).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // Unregister the extra engine.
  v1::UnregisterPublisherRequest un;
  un.set_pod("extra-0");
  v1::UnregisterPublisherResponse ur;
  {
    grpc::ClientContext ctx;
    grpc::Status st = admin().UnregisterPublisher(&ctx, un, &ur);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_GT(ur.pairs_dropped(), 0u);
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub().GetPod(&ctx, get, &pod).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // Clear everything: the index empties (the simulator then refills it).
  clear.Clear();
  clear.set_all(true);
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(admin().Clear(&ctx, clear, &cr).ok());
  }
  EXPECT_GT(cr.blocks_cleared(), 0u);
  v1::ClearRequest none;
  grpc::ClientContext ctx;
  EXPECT_EQ(admin().Clear(&ctx, none, &cr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// The API from another language: Python stubs generated from proto/ at test time.
TEST_F(QueryTest, PythonClientRunsALookupAndReadsStats) {
  Process py(
      {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/python_client.py",
       env->grpc_addr, env->dir + "/prompts.txt"},
      env->dir + "/pyclient.log");
  EXPECT_EQ(py.Wait(std::chrono::milliseconds(60000)), 0) << py.Log();
}

// The client package installs from the repository without the network (pip, no index, no
// build isolation: Debian's setuptools and grpc_tools), stubs built in, and works installed.
TEST_F(QueryTest, PythonClientPackageInstallsWithoutNetworkAndWorksInstalled) {
  const std::string target = env->dir + "/pyclient-installed";
  Process pip({"/usr/bin/python3", "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
               "--no-build-isolation", "--target", target,
               std::string(KVIDX_SOURCE_ROOT) + "/clients/python"},
              env->dir + "/pip.log");
  ASSERT_EQ(pip.Wait(std::chrono::milliseconds(120000)), 0) << pip.Log();
  ASSERT_EQ(access((target + "/kvidx_client/kvidx_pb2.py").c_str(), R_OK), 0) << pip.Log();
  setenv("KVIDX_CLIENT_PATH", target.c_str(), 1);
  Process py(
      {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/python_client.py",
       env->grpc_addr, env->dir + "/prompts.txt"},
      env->dir + "/pyclient-installed.log");
  unsetenv("KVIDX_CLIENT_PATH");
  EXPECT_EQ(py.Wait(std::chrono::milliseconds(60000)), 0) << py.Log();
}

// A sequence-id publisher registered at run time; its sequences are read back through the
// owning worker.
TEST_F(QueryTest, SequencesOfASequenceIdPublisher) {
  Process peer(
      {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/seqid_peer.py",
       env->dir + "/seqid.ports"},
      env->dir + "/seqid.log");
  auto [pub_ep, replay_ep] = PeerEndpoints(env->dir + "/seqid.ports");
  v1::RegisterPublisherRequest reg;
  reg.set_pod("seq-pod");
  reg.set_model("qm4");  // its blocks have 4 tokens
  reg.set_endpoint(pub_ep);
  reg.set_replay_endpoint(replay_ep);
  reg.set_dialect("seqid");
  v1::Pod pod;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(admin().RegisterPublisher(&ctx, reg, &pod).ok());
  }
  v1::ListSequencesRequest list;
  list.set_pod("seq-pod");
  v1::ListSequencesResponse seqs;
  ASSERT_TRUE(WaitFor(
      [&] {
        grpc::ClientContext ctx;
        seqs.Clear();
        return stub().ListSequences(&ctx, list, &seqs).ok() && seqs.sequences_size() == 2 &&
               seqs.sequences(0).finished() && seqs.sequences(1).finished();
      },
      std::chrono::milliseconds(10000)))
      << seqs.DebugString() << peer.Log();
  EXPECT_EQ(seqs.sequences(0).sequence_id(), 1);
  EXPECT_EQ(seqs.sequences(0).request_id(), "req-one");
  EXPECT_TRUE(seqs.sequences(0).succeeded());
  EXPECT_EQ(seqs.sequences(0).stored_blocks(), 2u);  // block 2 was removed
  EXPECT_EQ(seqs.sequences(1).stored_blocks(), 1u);
  EXPECT_EQ(seqs.sequences(1).request_id(), "two\nlines \\n");  // a newline cannot split it
  v1::GetSequenceRequest get;
  get.set_pod("seq-pod");
  get.set_sequence_id(1);
  v1::Sequence one;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub().GetSequence(&ctx, get, &one).ok());
  }
  auto keys = index::ChainBlockKeys(index::NamespaceRoot("qm4", ""),
                                    std::vector<uint32_t>{11, 12, 13, 14, 15, 16, 17, 18}, 4);
  ASSERT_GE(one.block_keys_size(), 2);
  EXPECT_EQ(one.block_keys(0), keys[0]);
  EXPECT_EQ(one.block_keys(1), keys[1]);
  get.set_sequence_id(2);  // its request id spans two lines on the wire between the processes
  {
    grpc::ClientContext ctx;
    v1::Sequence two;
    ASSERT_TRUE(stub().GetSequence(&ctx, get, &two).ok());
    EXPECT_EQ(two.request_id(), "two\nlines \\n");
    EXPECT_EQ(two.block_keys_size(), 1);
  }
  get.set_sequence_id(99);
  {
    // The worker's refusal reaches the router with its reason and the AIBrix code, and is
    // counted in Stats.
    grpc::ClientContext ctx;
    grpc::Status st = stub().GetSequence(&ctx, get, &one);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(Reason(st), "UNKNOWN_SEQUENCE");
    EXPECT_EQ(Code(st), 1007u);
    grpc::ClientContext sctx;
    v1::StatsResponse stats;
    ASSERT_TRUE(stub().Stats(&sctx, v1::StatsRequest(), &stats).ok());
    EXPECT_GE(stats.error_codes().count(1007) ? stats.error_codes().at(1007) : 0, 1u);
  }
  list.set_pod("nobody");
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub().ListSequences(&ctx, list, &seqs).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // The same through kvidxctl, in text and JSON.
  auto [rc, out] = Ctl({"sequences", "seq-pod"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("finished ok             2  req-one\n"), std::string::npos) << out;
  // A request id is one table cell: its newline and backslash are escaped.
  EXPECT_NE(out.find("finished failed         1  two\\nlines \\\\n\n"), std::string::npos) << out;
  std::tie(rc, out) = Ctl({"--json", "sequences", "seq-pod", "--dp", "0"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"request_id\": \"req-one\""), std::string::npos) << out;
  std::tie(rc, out) = Ctl({"sequence", "seq-pod", "1"});
  EXPECT_EQ(rc, 0) << out;
  char first[64];
  std::snprintf(first, sizeof first, "block 0  %016lx", static_cast<unsigned long>(keys[0]));
  EXPECT_NE(out.find("sequence 1 of seq-pod: finished ok, 2 blocks stored"), std::string::npos)
      << out;
  EXPECT_NE(out.find(first), std::string::npos) << out;
  std::tie(rc, out) = Ctl({"--json", "sequence", "seq-pod", "2"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"sequence_id\": \"2\""), std::string::npos) << out;
  std::tie(rc, out) = Ctl({"sequence", "seq-pod", "99"});
  EXPECT_EQ(rc, 1) << out;
  v1::UnregisterPublisherRequest un;
  un.set_pod("seq-pod");
  v1::UnregisterPublisherResponse ur;
  grpc::ClientContext ctx;
  EXPECT_TRUE(admin().UnregisterPublisher(&ctx, un, &ur).ok());
}

// Issue 10: an RPC may not make kvidx bind (an ipc:// bind unlinks its path first, the
// segment's own name among them) nor name anything but a TCP endpoint.
TEST_F(QueryTest, RegisterPublisherMayNotBindNorNameNonTcpEndpoints) {
  v1::RegisterPublisherRequest reg;
  reg.set_pod("intruder");
  reg.set_model("qm");
  reg.set_endpoint("ipc:///dev/shm/" + env->segment);
  reg.set_bind(true);
  v1::Pod pod;
  {
    grpc::ClientContext ctx;
    grpc::Status st = admin().RegisterPublisher(&ctx, reg, &pod);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(Reason(st), "BIND_NOT_ALLOWED");
  }
  reg.set_bind(false);
  {
    grpc::ClientContext ctx;
    grpc::Status st = admin().RegisterPublisher(&ctx, reg, &pod);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(Reason(st), "ENDPOINT_NOT_ALLOWED");
  }
  EXPECT_EQ(access(("/dev/shm/" + env->segment).c_str(), F_OK), 0) << "the segment's name is gone";
}

// Issue 10: limits before work. A request over max_request_bytes is refused by gRPC before it is
// parsed; WatchEvents streams are capped.
TEST_F(QueryTest, OversizedRequestsAndTooManyWatchersAreRefused) {
  {
    v1::LookupRequest req;
    auto* q = req.add_queries();
    q->mutable_namespace_()->set_model("qm");
    for (int i = 0; i < 400000; ++i) q->mutable_tokens()->add_ids(100000 + i);  // > 1 MiB
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    EXPECT_EQ(stub().Lookup(&ctx, req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // Open streams until one is refused: at most max_watch_streams (2) run at once. (A stream of
  // an earlier test may still be winding down, so the count accepted here can be lower.)
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::WatchEvent>>> readers;
  int accepted = 0;
  grpc::Status refused;
  for (int i = 0; i < 6; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    ctxs.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::WatchEventsRequest req;
    req.set_stats_interval_ms(1);  // raised to min_stats_interval_ms by the server
    readers.push_back(stub().WatchEvents(ctxs.back().get(), req));
    v1::WatchEvent ev;
    if (readers.back()->Read(&ev)) {
      ++accepted;
      continue;
    }
    refused = readers.back()->Finish();
    break;
  }
  for (auto& c : ctxs) c->TryCancel();
  EXPECT_GE(accepted, 1);
  EXPECT_LE(accepted, 2);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(Reason(refused), "TOO_MANY_WATCHERS");
}

// GET /metrics over a plain socket.
std::string Scrape(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    (void)!write(fd, req.data(), req.size());
    char buf[65536];
    for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

// Issue 9, defect 11: totals are counters, latencies histograms.
TEST_F(QueryTest, MetricsHaveTheirPrometheusTypes) {
  ASSERT_GT(env->metrics_port, 0);
  {
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    auto* q = req.add_queries();
    q->mutable_namespace_()->set_model("qm");
    for (uint32_t t : env->prompts.at(0)) q->mutable_tokens()->add_ids(t);
    v1::LookupResponse resp;
    ASSERT_TRUE(stub().Lookup(&ctx, req, &resp).ok());
  }
  std::string m = Scrape(env->metrics_port);
  for (const char* line :
       {"# TYPE kvidx_batches_applied_total counter", "# TYPE kvidx_lookups_total counter",
        "# TYPE kvidx_resyncs_total counter", "# TYPE kvidx_blocks gauge",
        "# TYPE kvidx_lookup_seconds histogram", "# TYPE kvidx_apply_batch_seconds histogram",
        "kvidx_lookup_seconds_bucket{le=\"+Inf\"}", "kvidx_apply_batch_seconds_count "}) {
    EXPECT_NE(m.find(line), std::string::npos) << line << "\n" << m.substr(0, 2000);
  }
  EXPECT_EQ(m.find("# TYPE kvidx_batches_applied_total gauge"), std::string::npos);
  // Some batches were applied, so the apply histogram counts them.
  size_t at = m.find("kvidx_apply_batch_seconds_count ");
  ASSERT_NE(at, std::string::npos);
  EXPECT_GT(std::stod(m.substr(at + std::strlen("kvidx_apply_batch_seconds_count "))), 0.0);
}

TEST_F(QueryTest, QueryProcessMapsTheIndexReadOnly) {
  std::ifstream maps("/proc/" + std::to_string(env->query->pid()) + "/maps");
  std::string line;
  bool found = false;
  while (std::getline(maps, line)) {
    if (line.find("/dev/shm/" + env->segment) == std::string::npos) continue;
    if (line.find(".control") != std::string::npos) continue;
    found = true;
    std::istringstream ls(line);
    std::string range, perms;
    ls >> range >> perms;
    EXPECT_EQ(perms, "r--s") << line;
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace kvidx::testing
