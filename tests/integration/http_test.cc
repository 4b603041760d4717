// kvidx-query's HTTP/JSON and WebSocket listener (query/http_server.h) as a real process over a
// real index fed by kvidx-sim and a kvidx-ingest worker, called by real clients: curl for the
// HTTP routes, Debian's python3-websocket for the event streams.
#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "control/control_area.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

using nlohmann::json;
using v1::KvIndex;

struct Env {
  std::string dir, segment, config, http, admin_addr;
  std::unique_ptr<Process> sim, w0, query, tokenizer;
  int tokenizer_port = 0;
  std::unique_ptr<KvIndex::Stub> stub, admin_stub;
  std::string prompt;  // a sample prompt's token ids, comma-separated
};
Env* env = nullptr;

struct HttpAnswer {
  int status = 0;
  std::string body;
  json Json() const { return json::parse(body, nullptr, false); }
};

// curl with `args`, against `path` of the listener; the status and the body.
HttpAnswer Curl(const std::string& path, std::vector<std::string> args = {}) {
  static int n = 0;
  const std::string base = env->dir + "/curl-" + std::to_string(++n);
  std::vector<std::string> argv{"/usr/bin/curl", "-s", "-S",          "--max-time", "20", "-o",
                                base + ".body",  "-w", "%{http_code}"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("http://" + env->http + path);
  Process p(argv, base + ".log");
  EXPECT_EQ(p.Wait(std::chrono::milliseconds(30000)), 0) << p.Log();
  HttpAnswer a;
  a.status = std::atoi(p.Log().c_str());
  std::ifstream in(base + ".body");
  std::stringstream ss;
  ss << in.rdbuf();
  a.body = ss.str();
  return a;
}

HttpAnswer PostJson(const std::string& path, const std::string& body) {
  static int n = 0;
  const std::string file = env->dir + "/post-" + std::to_string(++n) + ".json";
  std::ofstream(file) << body;
  return Curl(path,
              {"-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@" + file});
}

class HttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    env = new Env;
    env->dir = "/tmp/kvidx-http-" + std::to_string(getpid());
    mkdir(env->dir.c_str(), 0755);
    env->segment = "kvidx-http-" + std::to_string(getpid());
    index::Segment::Remove(env->segment);
    control::ControlArea::Remove(control::ControlName(env->segment));
    env->sim = std::make_unique<Process>(
        std::vector<std::string>{
            BuildPath("tools/kvidx-sim"), "--pods", "3", "--base-port", "0", "--requests", "100000",
            "--rate", "100", "--cache-blocks", "400", "--config-out", env->dir + "/sim.toml",
            "--prompts-out", env->dir + "/prompts.txt", "--model", "hm", "--start-delay-ms", "300"},
        env->dir + "/sim.log");
    WaitFor([] { return access((env->dir + "/sim.toml").c_str(), R_OK) == 0; },
            std::chrono::milliseconds(5000));
    std::ifstream in(env->dir + "/sim.toml");
    std::stringstream ss;
    ss << in.rdbuf();
    // The engines' tokenizer (vLLM's /tokenize), named for every model by the AIBrix variable.
    env->tokenizer = std::make_unique<Process>(
        std::vector<std::string>{
            "/usr/bin/python3",
            std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/tokenizer_peer.py",
            env->dir + "/tokenizer.port", env->dir + "/prompts.txt"},
        env->dir + "/tokenizer.log");
    env->tokenizer_port = std::atoi(
        WaitForFile(env->dir + "/tokenizer.port", std::chrono::milliseconds(30000)).c_str());
    ASSERT_GT(env->tokenizer_port, 0) << env->tokenizer->Log();
    env->config = env->dir + "/kvidx.toml";
    env->admin_addr = "unix:" + env->dir + "/admin.sock";
    std::ofstream out(env->config);
    out << "[segment]\nname = \"" << env->segment
        << "\"\nblocks = 50000\npairs = 200000\npublishers = 16\nnamespaces = 8\nstripes = 32\n"
        << "[ingest]\nworkers = 1\nreconnect_initial_ms = 100\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\n"
        << "http_listen = \"127.0.0.1:0\"\nadmin_listen = \"" << env->admin_addr << "\"\n"
        << "max_tokens = 4096\nmax_request_bytes = 1048576\nmax_watch_streams = 4\n"
        << "tokenizer_timeout_ms = 1000\ntokenizer_cache_entries = 2\n\n"
        << "[[model]]\nname = \"qm4\"\nblock_size = 4\n\n"  // the sequence-id peer's
        << ss.str();
    out.close();
    env->w0 = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", env->config,
                                 "--worker", "0"},
        env->dir + "/w0.log");
    const std::string tokenizer = "127.0.0.1:" + std::to_string(env->tokenizer_port);
    setenv("AIBRIX_REMOTE_TOKENIZER_ENDPOINT", tokenizer.c_str(), 1);
    env->query = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("query/kvidx-query"), "--config", env->config,
                                 "--port-file", env->dir + "/query.port"},
        env->dir + "/query.log");
    unsetenv("AIBRIX_REMOTE_TOKENIZER_ENDPOINT");
    std::string port = WaitForFile(env->dir + "/query.port", std::chrono::milliseconds(30000));
    ASSERT_FALSE(port.empty()) << env->query->Log();
    std::istringstream ports(port);
    int grpc_port = 0, metrics_port = 0, admin_tcp_port = 0, http_port = 0;
    ports >> grpc_port >> metrics_port >> admin_tcp_port >> http_port;
    ASSERT_GT(http_port, 0) << port;
    env->http = "127.0.0.1:" + std::to_string(http_port);
    env->stub = KvIndex::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port),
                                                     grpc::InsecureChannelCredentials()));
    env->admin_stub =
        KvIndex::NewStub(grpc::CreateChannel(env->admin_addr, grpc::InsecureChannelCredentials()));
    ASSERT_TRUE(WaitFor(
        [] {
          grpc::ClientContext ctx;
          v1::StatsResponse s;
          return env->stub->Stats(&ctx, {}, &s).ok() && s.blocks() > 100 && s.publishers() == 3;
        },
        std::chrono::milliseconds(20000)))
        << env->query->Log();
    std::ifstream pin(env->dir + "/prompts.txt");
    std::getline(pin, env->prompt);
    ASSERT_FALSE(env->prompt.empty());
  }
  static void TearDownTestSuite() {
    for (auto* p : {env->query.get(), env->w0.get(), env->sim.get(), env->tokenizer.get()})
      p->Signal(SIGTERM);
    for (auto* p : {env->query.get(), env->w0.get(), env->sim.get(), env->tokenizer.get()})
      p->Wait();
    index::Segment::Remove(env->segment);
    control::ControlArea::Remove(control::ControlName(env->segment));
    delete env;
  }
};

std::string LookupJson(const std::string& model, const std::string& tokens) {
  return R"({"queries": [{"namespace": {"model": ")" + model + R"("}, "tokens": {"ids": [)" +
         tokens + "]}}]}";
}

// The (pod, matched blocks) pairs of a lookup answer.
std::vector<std::pair<std::string, uint32_t>> Matches(const v1::LookupResponse& r) {
  std::vector<std::pair<std::string, uint32_t>> m;
  for (const auto& pm : r.results(0).matches()) m.emplace_back(pm.pod(), pm.matched_blocks());
  std::sort(m.begin(), m.end());
  return m;
}

TEST_F(HttpTest, LookupOverHttpAnswersAsTheGrpcLookupInTheSameSchema) {
  v1::LookupRequest req;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(LookupJson("hm", env->prompt), &req).ok());
  // The index changes while the engines run: the two answers are compared until one pair,
  // taken back to back, agrees.
  v1::LookupResponse over_http, over_grpc;
  ASSERT_TRUE(WaitFor(
      [&] {
        HttpAnswer a = PostJson("/v1/lookup", LookupJson("hm", env->prompt));
        over_http.Clear();
        over_grpc.Clear();
        grpc::ClientContext ctx;
        return a.status == 200 &&
               google::protobuf::util::JsonStringToMessage(a.body, &over_http).ok() &&
               env->stub->Lookup(&ctx, req, &over_grpc).ok() && over_http.results_size() == 1 &&
               Matches(over_http) == Matches(over_grpc);
      },
      std::chrono::milliseconds(20000)));
  EXPECT_TRUE(over_http.results(0).namespace_known());
  EXPECT_GT(over_http.results(0).prompt_blocks(), 0u);
  EXPECT_FALSE(over_http.results(0).matches().empty());
  // A prompt nobody has, and an unknown model: answers, not errors.
  HttpAnswer miss =
      PostJson("/v1/lookup", LookupJson("hm", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"));
  ASSERT_EQ(miss.status, 200) << miss.body;
  EXPECT_TRUE(miss.Json()["results"][0]["matches"].empty()) << miss.body;
  HttpAnswer unknown = PostJson("/v1/lookup", LookupJson("no-model", "1,2,3"));
  ASSERT_EQ(unknown.status, 200);
  EXPECT_EQ(unknown.Json()["results"][0]["namespaceKnown"], false) << unknown.body;
}

TEST_F(HttpTest, StatsPodsAndHealthInTheProtoJsonMapping) {
  HttpAnswer stats = Curl("/v1/stats");
  ASSERT_EQ(stats.status, 200);
  v1::StatsResponse s;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(stats.body, &s).ok()) << stats.body;
  EXPECT_EQ(s.publishers(), 3u);
  EXPECT_GT(s.blocks(), 0u);
  HttpAnswer pods = Curl("/v1/pods");
  ASSERT_EQ(pods.status, 200);
  v1::ListPodsResponse list;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(pods.body, &list).ok());
  ASSERT_EQ(list.pods_size(), 3);
  HttpAnswer one = Curl("/v1/pods/" + list.pods(1).pod() + "?dp_rank=0");
  ASSERT_EQ(one.status, 200) << one.body;
  EXPECT_EQ(one.Json()["pod"], list.pods(1).pod());
  HttpAnswer nobody = Curl("/v1/pods/nobody");
  EXPECT_EQ(nobody.status, 404);
  EXPECT_EQ(nobody.Json()["error"]["reason"], "UNKNOWN_POD") << nobody.body;
  EXPECT_EQ(nobody.Json()["error"]["status"], "NOT_FOUND");
  HttpAnswer health = Curl("/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.Json()["status"], "SERVING");
}

TEST_F(HttpTest, AibrixStatusRouteHasTheSeedsFields) {
  HttpAnswer a = Curl("/api/v1/cache/status");
  ASSERT_EQ(a.status, 200);
  json j = a.Json();
  EXPECT_EQ(j["enabled"], true) << a.body;
  EXPECT_EQ(j["healthy"], true);
  for (const char* f : {"total_sequences", "total_blocks", "total_tokens", "hit_rate",
                        "eviction_count", "last_updated"})
    EXPECT_TRUE(j["stats"].contains(f)) << f << " in " << a.body;
  EXPECT_GT(j["stats"]["total_blocks"].get<uint64_t>(), 0u);
  EXPECT_GT(j["stats"]["last_updated"].get<int64_t>(), 1'600'000'000);
}

TEST_F(HttpTest, BadRequestsGetAStatusAndAReason) {
  HttpAnswer bad = PostJson("/v1/lookup", "{not json");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.Json()["error"]["reason"], "BAD_JSON") << bad.body;
  std::string many = "1";
  for (int i = 0; i < 5000; ++i) many += ",7";
  HttpAnswer too_many = PostJson("/v1/lookup", LookupJson("hm", many));
  EXPECT_EQ(too_many.status, 400);
  EXPECT_EQ(too_many.Json()["error"]["reason"], "TOO_MANY_TOKENS") << too_many.body;
  HttpAnswer huge = PostJson("/v1/lookup", std::string(2 << 20, ' '));  // past 1 MiB
  EXPECT_EQ(huge.status, 413);
  EXPECT_EQ(Curl("/v1/lookup").status, 405);
  HttpAnswer none = Curl("/no/such/route");
  EXPECT_EQ(none.status, 404);
  EXPECT_EQ(none.Json()["error"]["reason"], "NO_ROUTE");
  EXPECT_EQ(Curl("/v1/events").status, 426);  // a WebSocket route asked without the upgrade
}

TEST_F(HttpTest, ClearIsAdminOnlyAndClearsNothing) {
  grpc::ClientContext ctx;
  v1::StatsResponse before;
  ASSERT_TRUE(env->stub->Stats(&ctx, {}, &before).ok());
  HttpAnswer a = Curl("/api/v1/cache/clear", {"-X", "POST"});
  EXPECT_EQ(a.status, 403);
  EXPECT_EQ(a.Json()["error"]["reason"], "ADMIN_ONLY") << a.body;
  grpc::ClientContext ctx2;
  v1::StatsResponse after;
  ASSERT_TRUE(env->stub->Stats(&ctx2, {}, &after).ok());
  EXPECT_GT(after.blocks(), 0u);
  EXPECT_EQ(after.publishers(), before.publishers());
}

TEST_F(HttpTest, WebSocketStreamsCarryAppliedEventsInBothShapes) {
  for (auto [path, kind] : {std::pair{"/api/v1/cache/events?stats_interval_ms=1000", "aibrix"},
                            std::pair{"/v1/events", "proto"}}) {
    Process ws(
        {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/ws_client.py",
         "ws://" + env->http + path, "20", kind},
        env->dir + "/ws-" + kind + ".log");
    EXPECT_EQ(ws.Wait(std::chrono::milliseconds(60000)), 0) << ws.Log();
    EXPECT_NE(ws.Log().find("ok"), std::string::npos) << ws.Log();
  }
  // Each stream ended with its client: the watcher slots are free again.
  HttpAnswer stats = Curl("/v1/stats");
  EXPECT_EQ(stats.status, 200);
}

TEST_F(HttpTest, AibrixSequencesOfASequenceIdPublisher) {
  Process peer(
      {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/seqid_peer.py",
       env->dir + "/seqid.ports"},
      env->dir + "/seqid.log");
  auto [pub_ep, replay_ep] = PeerEndpoints(env->dir + "/seqid.ports");
  v1::RegisterPublisherRequest reg;
  reg.set_pod("seq-pod");
  reg.set_model("qm4");
  reg.set_endpoint(pub_ep);
  reg.set_replay_endpoint(replay_ep);
  reg.set_dialect("seqid");
  v1::Pod pod;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(env->admin_stub->RegisterPublisher(&ctx, reg, &pod).ok());
  }
  json list;
  ASSERT_TRUE(WaitFor(
      [&] {
        HttpAnswer a = Curl("/api/v1/cache/sequences");
        list = a.Json();
        return a.status == 200 && list["sequences"].size() == 2 &&
               list["sequences"][0]["finished"] == true && list["sequences"][1]["finished"] == true;
      },
      std::chrono::milliseconds(10000)))
      << list.dump() << peer.Log();
  EXPECT_EQ(list["sequences"][0]["id"], 1);
  EXPECT_EQ(list["sequences"][0]["block_count"], 2);  // its block 2 was removed
  EXPECT_EQ(list["sequences"][0]["token_count"], 8);  // 4 tokens a block
  HttpAnswer one = Curl("/api/v1/cache/sequences/1?pod=seq-pod");
  ASSERT_EQ(one.status, 200) << one.body;
  EXPECT_EQ(one.Json()["sequence_id"], 1);
  EXPECT_EQ(one.Json()["blocks"], json::array({0, 1})) << one.body;
  EXPECT_TRUE(one.Json()["metadata"].contains("last_accessed"));
  HttpAnswer missing = Curl("/api/v1/cache/sequences/99");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.Json()["error"]["code"], 1007) << missing.body;
  EXPECT_EQ(missing.Json()["error"]["reason"], "UNKNOWN_SEQUENCE");
  HttpAnswer status = Curl("/api/v1/cache/status");
  EXPECT_EQ(status.Json()["stats"]["total_sequences"], 2) << status.body;
  grpc::ClientContext ctx;
  v1::UnregisterPublisherRequest un;
  un.set_pod("seq-pod");
  v1::UnregisterPublisherResponse ur;
  EXPECT_TRUE(env->admin_stub->UnregisterPublisher(&ctx, un, &ur).ok());
}

int TokenizerCalls() {
  static int n = 0;
  const std::string base = env->dir + "/calls-" + std::to_string(++n);
  Process p({"/usr/bin/curl", "-s", "-o", base + ".body",
             "http://127.0.0.1:" + std::to_string(env->tokenizer_port) + "/calls"},
            base + ".log");
  EXPECT_EQ(p.Wait(std::chrono::milliseconds(30000)), 0);
  std::ifstream in(base + ".body");
  json j = json::parse(in, nullptr, false);
  return j.is_object() ? j["calls"].get<int>() : -1;
}

v1::LookupResponse GrpcLookup(const v1::LookupQuery& q, grpc::Status* st) {
  v1::LookupRequest req;
  *req.add_queries() = q;
  v1::LookupResponse resp;
  grpc::ClientContext ctx;
  *st = env->stub->Lookup(&ctx, req, &resp);
  return resp;
}

std::string Reason(const grpc::Status& st, uint32_t* code) {
  v1::ErrorDetail d;
  d.ParseFromString(st.error_details());
  *code = d.code();
  return d.reason();
}

// Prompt text goes through the engine's /tokenize (the endpoint given by
// AIBRIX_REMOTE_TOKENIZER_ENDPOINT), and lands on the same blocks as its token ids; a repeated
// prompt is answered from the cache; the answer says which path it took.
TEST_F(HttpTest, PromptTextIsTokenizedByTheEngineAndCached) {
  v1::LookupQuery by_text;
  by_text.mutable_namespace_()->set_model("hm");
  by_text.set_prompt("sample:0");
  v1::LookupQuery by_ids;
  by_ids.mutable_namespace_()->set_model("hm");
  std::stringstream ls(env->prompt);
  std::string tok;
  while (std::getline(ls, tok, ',')) by_ids.mutable_tokens()->add_ids(std::stoul(tok));
  const int calls0 = TokenizerCalls();
  grpc::Status st;
  v1::LookupResponse first = GrpcLookup(by_text, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(first.results(0).input(), "tokenizer");
  EXPECT_EQ(first.results(0).prompt_tokens(), static_cast<uint32_t>(by_ids.tokens().ids_size()));
  EXPECT_EQ(TokenizerCalls(), calls0 + 1);
  v1::LookupResponse again, ids;
  ASSERT_TRUE(WaitFor(
      [&] {
        again = GrpcLookup(by_text, &st);
        ids = GrpcLookup(by_ids, &st);
        return st.ok() && Matches(again) == Matches(ids);
      },
      std::chrono::milliseconds(20000)));
  EXPECT_EQ(again.results(0).input(), "tokenizer_cache");
  EXPECT_EQ(ids.results(0).input(), "tokens");
  EXPECT_EQ(again.results(0).prompt_blocks(), ids.results(0).prompt_blocks());
  EXPECT_FALSE(again.results(0).matches().empty());
  EXPECT_EQ(TokenizerCalls(), calls0 + 1);  // every repeat came from the cache
  // Chat messages, and prompt text over HTTP.
  v1::LookupQuery chat;
  chat.mutable_namespace_()->set_model("hm");
  auto* m = chat.mutable_messages()->add_messages();
  m->set_role("user");
  m->set_content("sample:");
  chat.mutable_messages()->add_messages()->set_content("0");
  v1::LookupResponse by_chat = GrpcLookup(chat, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(by_chat.results(0).input(), "tokenizer");
  EXPECT_EQ(by_chat.results(0).prompt_blocks(), ids.results(0).prompt_blocks());
  HttpAnswer a = PostJson("/v1/lookup", R"({"queries": [{"namespace": {"model": "hm"},
                                            "prompt": "sample:1"}]})");
  ASSERT_EQ(a.status, 200) << a.body;
  EXPECT_EQ(a.Json()["results"][0]["input"], "tokenizer") << a.body;
  // The cache holds 2 entries: after two others, sample:0 is asked for again.
  for (const char* p : {"sample:2", "sample:3", "sample:0"}) {
    by_text.set_prompt(p);
    ASSERT_TRUE(GrpcLookup(by_text, &st).results(0).input() == "tokenizer") << p;
  }
  grpc::ClientContext ctx;
  v1::StatsResponse s;
  ASSERT_TRUE(env->stub->Stats(&ctx, {}, &s).ok());
  EXPECT_GE(s.tokenizer_calls(), 6u);
  EXPECT_GE(s.tokenizer_cache_hits(), 1u);
}

TEST_F(HttpTest, ATokenizerThatFailsOrHangsIsAnErrorWithCode1005) {
  v1::LookupQuery q;
  q.mutable_namespace_()->set_model("hm");
  q.set_prompt("fail");
  grpc::Status st;
  GrpcLookup(q, &st);
  uint32_t code = 0;
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Reason(st, &code), "TOKENIZER_FAILED");
  EXPECT_EQ(code, 1005u);
  // A tokenizer that never answers: the call ends at its deadline (tokenizer_timeout_ms).
  // A call waiting on the tokenizer holds up no other call: a Ping and a lookup by block keys
  // are answered while it waits (it can only end at its deadline: the tokenizer never
  // answers). This holds with or without the listener's own thread for such calls (gRPC has
  // several callback threads), so it does not test that thread; it tests the property.
  q.set_prompt("slow");
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<bool> slow_done{false};
  std::thread slow([&] {
    GrpcLookup(q, &st);
    slow_done = true;
  });
  {
    grpc::ClientContext ping_ctx;
    v1::PingResponse pong;
    EXPECT_TRUE(env->stub->Ping(&ping_ctx, {}, &pong).ok());
    v1::LookupQuery keys;
    keys.mutable_namespace_()->set_model("hm");
    keys.mutable_block_keys()->add_keys(1);
    grpc::Status fast;
    GrpcLookup(keys, &fast);
    EXPECT_TRUE(fast.ok()) << fast.error_message();
    EXPECT_FALSE(slow_done.load()) << "a lookup waited behind a call blocked on the tokenizer";
  }
  slow.join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(Reason(st, &code), "TOKENIZER_TIMEOUT");
  EXPECT_EQ(code, 1005u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
  HttpAnswer a = PostJson("/v1/lookup", R"({"queries": [{"namespace": {"model": "hm"},
                                            "prompt": "fail"}]})");
  EXPECT_EQ(a.status, 503);
  EXPECT_EQ(a.Json()["error"]["code"], 1005) << a.body;
  grpc::ClientContext ctx;
  v1::StatsResponse s;
  ASSERT_TRUE(env->stub->Stats(&ctx, {}, &s).ok());
  EXPECT_GE(s.tokenizer_failures(), 3u);
  EXPECT_GE(s.error_codes().count(1005) ? s.error_codes().at(1005) : 0, 3u);
}

}  // namespace
}  // namespace kvidx::testing
