// The AIBRIX_* variables (config/aibrix_env.h): one test per variable, the precedence against
// the file and KVIDX_*, and the Go duration syntax.
#include "config/aibrix_env.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvidx::config {
namespace {

// Sets variables for one scope and unsets them on every path out of it.
class ScopedEnv {
 public:
  ScopedEnv(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (auto [k, v] : vars) {
      setenv(k, v, 1);
      names_.emplace_back(k);
    }
  }
  ~ScopedEnv() {
    for (const std::string& k : names_) unsetenv(k.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::vector<std::string> names_;
};

constexpr char kFile[] = R"(
[ingest]
workers = 3
replay_timeout_ms = 700
poll_timeout_ms = 50
linger_ms = 5
rcvhwm = 2000
max_buffered_batches = 300
)";

Config Parse(const char* text = kFile) {
  auto c = ParseConfig(text, "test.toml");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : Config{};
}

bool Warned(const Config& c, const std::string& name) {
  for (const std::string& w : c.warnings)
    if (w.rfind(name + "=", 0) == 0 && w.find("ignored") != std::string::npos) return true;
  return false;
}

TEST(GoDurationTest, ParsesGoSyntaxAndRefusesTheRest) {
  EXPECT_EQ(*ParseGoDuration("100ms"), 100u);
  EXPECT_EQ(*ParseGoDuration("5s"), 5000u);
  EXPECT_EQ(*ParseGoDuration("1m30s"), 90000u);
  EXPECT_EQ(*ParseGoDuration("1.5s"), 1500u);
  EXPECT_EQ(*ParseGoDuration("2h"), 7'200'000u);
  EXPECT_EQ(*ParseGoDuration("2500us"), 2u);
  EXPECT_EQ(*ParseGoDuration("3000000ns"), 3u);
  EXPECT_EQ(*ParseGoDuration("0"), 0u);
  for (const char* bad : {"", "100", "5 s", "s", "10parsecs", "-1s", "1e3s", "ms100"})
    EXPECT_FALSE(ParseGoDuration(bad).ok()) << bad;
}

TEST(AibrixEnvTest, ZmqPollTimeout) {
  EXPECT_EQ(Parse().poll_timeout_ms, 50u);
  ScopedEnv e{{"AIBRIX_ZMQ_POLL_TIMEOUT", "250ms"}};
  EXPECT_EQ(Parse().poll_timeout_ms, 250u);
  ScopedEnv k{{"KVIDX_POLL_TIMEOUT_MS", "20"}};
  EXPECT_EQ(Parse().poll_timeout_ms, 20u);  // kvidx's own name wins
}

TEST(AibrixEnvTest, ZmqPollTimeoutOfZeroIsRefused) {
  ScopedEnv e{{"AIBRIX_ZMQ_POLL_TIMEOUT", "0"}};
  auto c = ParseConfig(kFile, "test.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("AIBRIX_ZMQ_POLL_TIMEOUT"), std::string::npos);
}

TEST(AibrixEnvTest, ZmqReplayTimeout) {
  ScopedEnv e{{"AIBRIX_ZMQ_REPLAY_TIMEOUT", "5s"}};
  EXPECT_EQ(Parse().replay_timeout_ms, 5000u);
  ScopedEnv k{{"KVIDX_REPLAY_TIMEOUT_MS", "900"}};
  EXPECT_EQ(Parse().replay_timeout_ms, 900u);
}

TEST(AibrixEnvTest, ZmqLinger) {
  EXPECT_EQ(Parse().zmq_linger_ms, 5u);
  ScopedEnv e{{"AIBRIX_ZMQ_LINGER", "0"}};
  EXPECT_EQ(Parse().zmq_linger_ms, 0u);
  ScopedEnv e2{{"AIBRIX_ZMQ_LINGER", "1s"}};
  EXPECT_EQ(Parse().zmq_linger_ms, 1000u);
  ScopedEnv k{{"KVIDX_ZMQ_LINGER_MS", "7"}};
  EXPECT_EQ(Parse().zmq_linger_ms, 7u);
}

TEST(AibrixEnvTest, ZmqRecvTimeoutIsAcceptedWithAWarning) {
  ScopedEnv e{{"AIBRIX_ZMQ_RECV_TIMEOUT", "1s"}};
  Config c = Parse();
  EXPECT_TRUE(Warned(c, "AIBRIX_ZMQ_RECV_TIMEOUT"));
  EXPECT_EQ(c.poll_timeout_ms, 50u);  // changes nothing
  ScopedEnv bad{{"AIBRIX_ZMQ_RECV_TIMEOUT", "soon"}};
  EXPECT_FALSE(ParseConfig(kFile, "test.toml").ok());
}

TEST(AibrixEnvTest, ZmqSendTimeoutIsAcceptedWithAWarning) {
  ScopedEnv e{{"AIBRIX_ZMQ_SEND_TIMEOUT", "1s"}};
  EXPECT_TRUE(Warned(Parse(), "AIBRIX_ZMQ_SEND_TIMEOUT"));
  ScopedEnv bad{{"AIBRIX_ZMQ_SEND_TIMEOUT", "10"}};  // a Go duration needs a unit
  EXPECT_FALSE(ParseConfig(kFile, "test.toml").ok());
}

TEST(AibrixEnvTest, KvEventBufferSize) {
  ScopedEnv e{{"AIBRIX_KV_EVENT_BUFFER_SIZE", "10000"}};
  EXPECT_EQ(Parse().max_buffered_batches, 10000u);
  ScopedEnv k{{"KVIDX_MAX_BUFFERED_BATCHES", "42"}};
  EXPECT_EQ(Parse().max_buffered_batches, 42u);
}

TEST(AibrixEnvTest, KvEventBatchSizeIsAcceptedWithAWarning) {
  ScopedEnv e{{"AIBRIX_KV_EVENT_BATCH_SIZE", "100"}};
  EXPECT_TRUE(Warned(Parse(), "AIBRIX_KV_EVENT_BATCH_SIZE"));
  ScopedEnv bad{{"AIBRIX_KV_EVENT_BATCH_SIZE", "many"}};
  EXPECT_FALSE(ParseConfig(kFile, "test.toml").ok());
}

TEST(AibrixEnvTest, KvEventWorkerCount) {
  EXPECT_EQ(Parse().workers, 3u);
  ScopedEnv e{{"AIBRIX_KV_EVENT_WORKER_COUNT", "4"}};
  EXPECT_EQ(Parse().workers, 4u);
  ScopedEnv k{{"KVIDX_WORKERS", "2"}};
  EXPECT_EQ(Parse().workers, 2u);
}

TEST(AibrixEnvTest, KvEventWorkerCountPastTheControlAreaIsRefused) {
  ScopedEnv e{{"AIBRIX_KV_EVENT_WORKER_COUNT", "100000"}};
  auto c = ParseConfig(kFile, "test.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("AIBRIX_KV_EVENT_WORKER_COUNT"), std::string::npos);
}

TEST(AibrixEnvTest, KvEventQueueSize) {
  EXPECT_EQ(Parse().rcvhwm, 2000);
  ScopedEnv e{{"AIBRIX_KV_EVENT_QUEUE_SIZE", "1000"}};
  EXPECT_EQ(Parse().rcvhwm, 1000);
  ScopedEnv k{{"KVIDX_RCVHWM", "64"}};
  EXPECT_EQ(Parse().rcvhwm, 64);
}

TEST(AibrixEnvTest, KvEventSyncEnabled) {
  {
    ScopedEnv e{{"AIBRIX_KV_EVENT_SYNC_ENABLED", "true"}};
    EXPECT_TRUE(Parse().warnings.empty());
  }
  {
    ScopedEnv e{{"AIBRIX_KV_EVENT_SYNC_ENABLED", "false"}};
    EXPECT_TRUE(Warned(Parse(), "AIBRIX_KV_EVENT_SYNC_ENABLED"));
  }
  ScopedEnv bad{{"AIBRIX_KV_EVENT_SYNC_ENABLED", "maybe"}};
  EXPECT_FALSE(ParseConfig(kFile, "test.toml").ok());
}

TEST(AibrixEnvTest, UseRemoteTokenizer) {
  {
    ScopedEnv e{{"AIBRIX_USE_REMOTE_TOKENIZER", "true"}};
    EXPECT_TRUE(Parse().warnings.empty());
  }
  {
    ScopedEnv e{{"AIBRIX_USE_REMOTE_TOKENIZER", "false"}};
    EXPECT_TRUE(Warned(Parse(), "AIBRIX_USE_REMOTE_TOKENIZER"));
  }
  ScopedEnv bad{{"AIBRIX_USE_REMOTE_TOKENIZER", "yes please"}};
  EXPECT_FALSE(ParseConfig(kFile, "test.toml").ok());
}

TEST(AibrixEnvTest, PrefixCacheTokenizerType) {
  {
    ScopedEnv e{{"AIBRIX_PREFIX_CACHE_TOKENIZER_TYPE", "remote"}};
    EXPECT_TRUE(Parse().warnings.empty());
  }
  ScopedEnv e{{"AIBRIX_PREFIX_CACHE_TOKENIZER_TYPE", "local"}};
  EXPECT_TRUE(Warned(Parse(), "AIBRIX_PREFIX_CACHE_TOKENIZER_TYPE"));
}

TEST(AibrixEnvTest, RemoteTokenizerEndpointIsEveryUnnamedModelsTokenizer) {
  constexpr char kModels[] = R"(
[[model]]
name = "a"
[[model]]
name = "b"
tokenizer_endpoint = "http://b-engine:8000"
)";
  ScopedEnv e{{"AIBRIX_REMOTE_TOKENIZER_ENDPOINT", "vllm:8000"}};
  Config c = Parse(kModels);
  ASSERT_EQ(c.models.size(), 2u);
  EXPECT_EQ(c.models[0].tokenizer_endpoint, "http://vllm:8000");
  EXPECT_EQ(c.models[1].tokenizer_endpoint, "http://b-engine:8000");  // the file's own wins
  ScopedEnv bad{{"AIBRIX_REMOTE_TOKENIZER_ENDPOINT", "https://vllm:8000"}};
  EXPECT_FALSE(ParseConfig(kModels, "test.toml").ok());
}

TEST(AibrixEnvTest, NoVariablesNoWarningsAndTheFileStands) {
  Config c = Parse();
  EXPECT_TRUE(c.warnings.empty());
  EXPECT_EQ(c.replay_timeout_ms, 700u);
  EXPECT_EQ(c.max_buffered_batches, 300u);
}

}  // namespace
}  // namespace kvidx::config
