#include "config/config.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"

namespace kvidx::config {
namespace {

constexpr char kSample[] = R"(
[segment]
name = "kvidx-test"
blocks = 1000
pairs = 5000
publishers = 16
namespaces = 4
stripes = 8
mode = "0640"

[ingest]
workers = 3
replay_timeout_ms = 500
bind_tcp_ports = "5557"

[query]
listen = "127.0.0.1:6000"
max_tokens = 4096

[[model]]
name = "llama"
block_size = 32
lora_names = { 3 = "sql" }

[[publisher]]
pod = "pod-a"
dp_rank = 1
model = "llama"
endpoint = "tcp://10.0.0.1:5557"
replay_endpoint = "tcp://10.0.0.1:5558"
dialect = "sglang"
bind = true
)";

TEST(ConfigTest, ParsesEveryKey) {
  auto c = ParseConfig(kSample, "sample.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->segment, "kvidx-test");
  EXPECT_EQ(c->geometry.blocks, 1000u);
  EXPECT_EQ(c->geometry.stripes, 8u);
  EXPECT_EQ(c->segment_mode, 0640u);
  EXPECT_EQ(c->workers, 3u);
  EXPECT_EQ(c->replay_timeout_ms, 500u);
  EXPECT_EQ(c->listen, "127.0.0.1:6000");
  EXPECT_EQ(c->max_tokens, 4096u);
  ASSERT_EQ(c->models.size(), 1u);
  EXPECT_EQ(c->models[0].block_size, 32u);
  EXPECT_EQ(c->models[0].lora_names.at(3), "sql");
  ASSERT_EQ(c->publishers.size(), 1u);
  EXPECT_EQ(c->publishers[0].dp_rank, 1u);
  EXPECT_EQ(c->publishers[0].dialect, Dialect::kSglang);
  EXPECT_TRUE(c->publishers[0].bind);
}

TEST(ConfigTest, BadInputIsAClearError) {
  auto bad_syntax = ParseConfig("[segment\nname=", "x.toml");
  ASSERT_FALSE(bad_syntax.ok());
  EXPECT_NE(bad_syntax.status().message().find("x.toml"), std::string::npos);
  auto bad_type = ParseConfig("[segment]\nblocks = \"many\"\n", "y.toml");
  ASSERT_FALSE(bad_type.ok());
  EXPECT_NE(bad_type.status().message().find("blocks"), std::string::npos);
  EXPECT_FALSE(
      ParseConfig("[[publisher]]\npod=\"a\"\nmodel=\"nope\"\nendpoint=\"tcp://x:1\"\n", "z.toml")
          .ok());
  EXPECT_FALSE(ParseConfig("[[model]]\nname=\"m\"\n[[publisher]]\npod=\"a\"\nmodel=\"m\"\n"
                           "endpoint=\"tcp://x:1\"\ndialect=\"klingon\"\n",
                           "d.toml")
                   .ok());
  EXPECT_TRUE(absl::IsNotFound(LoadConfig("/nonexistent/kvidx.toml").status()));
  // Found by config_fuzz: a float where an integer belongs was converted with undefined
  // behaviour (1e24 does not fit); a value past the field's range was cut.
  for (const char* text : {"[segment]\nstripes = 1E024\n", "[segment]\nstripes = 16.0\n",
                           "[ingest]\nworkers = 4294967296\n", "[segment]\nblocks = -1\n"}) {
    auto c = ParseConfig(text, "n.toml");
    EXPECT_FALSE(c.ok()) << text;
    EXPECT_NE(c.status().message().find("wrong type"), std::string::npos) << c.status();
  }
}

// Issue 9, defect 9: a misspelt key used to run silently with its default.
TEST(ConfigTest, UnknownKeysAreAnErrorNamingFileLineAndKey) {
  auto typo = ParseConfig(
      "[[model]]\nname = \"m\"\n[[publisher]]\npod = \"a\"\nmodel = \"m\"\n"
      "endpoint = \"tcp://x:1\"\nreplay_endpont = \"tcp://x:2\"\n",
      "kvidx.toml");
  ASSERT_FALSE(typo.ok());
  EXPECT_EQ(typo.status().message(), "kvidx.toml:7: unknown key 'replay_endpont' in [[publisher]]");
  auto section = ParseConfig("[ingest]\nworkers = 2\nidle_probe = 5\n", "k.toml");
  ASSERT_FALSE(section.ok());
  EXPECT_EQ(section.status().message(), "k.toml:3: unknown key 'idle_probe' in [ingest]");
  auto top = ParseConfig("[segmnet]\nname = \"x\"\n", "t.toml");
  ASSERT_FALSE(top.ok());
  EXPECT_EQ(top.status().message(), "t.toml:1: unknown key 'segmnet' in the top level");
  EXPECT_TRUE(
      ParseConfig("[[model]]\nname = \"m\"\nlora_names = { 7 = \"sql\" }\n", "ok.toml").ok());
}

// Issue 10: kvidx never binds where its segments live.
TEST(ConfigTest, BindingInDevShmIsRefused) {
  auto c = ParseConfig(
      "[ingest]\nbind_ipc_dir = \"/run/kvidx/ipc\"\n"
      "[[model]]\nname = \"m\"\n[[publisher]]\npod = \"a\"\nmodel = \"m\"\n"
      "endpoint = \"ipc:///dev/shm/kvidx\"\nbind = true\n",
      "b.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("never in /dev/shm"), std::string::npos) << c.status();
  // Nor may the allowed directory itself be there.
  auto d = ParseConfig("[ingest]\nbind_ipc_dir = \"/dev/shm/x\"\n", "d.toml");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("outside /dev/shm"), std::string::npos) << d.status();
}

// Issue 10: binds only from the allow-list of the configuration (ports, an ipc directory).
TEST(ConfigTest, BindEndpointsComeFromTheAllowList) {
  auto c = ParseConfig(
      "[ingest]\nbind_tcp_ports = \"5557-5560,6001\"\n"
      "bind_ipc_dir = \"/run/kvidx/ipc/\"\n",
      "a.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  for (const char* ok :
       {"tcp://*:5557", "tcp://0.0.0.0:5560", "tcp://[::1]:6001", "ipc:///run/kvidx/ipc/pod-a"}) {
    EXPECT_TRUE(CheckBindEndpoint(*c, ok).ok()) << ok;
  }
  for (const char* no : {"tcp://*:5561", "tcp://*:6000", "tcp://*:*", "tcp://*:", "inproc://x",
                         "ipc:///run/kvidx/ipc/", "ipc:///run/kvidx/ipc/../../dev/shm/kvidx",
                         "ipc:///run/kvidx/ipcx", "ipc:///dev/shm/kvidx", "ipc://@abstract"}) {
    absl::Status st = CheckBindEndpoint(*c, no);
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << no;
    EXPECT_NE(st.message().find("not allowed"), std::string_view::npos) << st;
  }
  // With no allow-list nothing binds; a configured bind outside it is a configuration error.
  Config none;
  EXPECT_FALSE(CheckBindEndpoint(none, "tcp://*:5557").ok());
  auto bad = ParseConfig(
      "[[model]]\nname = \"m\"\n[[publisher]]\npod = \"a\"\nmodel = \"m\"\n"
      "endpoint = \"tcp://*:5557\"\nbind = true\n",
      "bad.toml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bind_tcp_ports"), std::string::npos) << bad.status();
  EXPECT_FALSE(ParseConfig("[ingest]\nbind_tcp_ports = \"5557-x\"\n", "p.toml").ok());
  EXPECT_FALSE(ParseConfig("[ingest]\nbind_tcp_ports = \"70000\"\n", "p.toml").ok());
}

// Issue 10: the listeners' security keys, and the rules between them.
TEST(ConfigTest, ListenerSecurityKeys) {
  auto c = ParseConfig(
      "[segment]\nowner = \"kvidx-ingest\"\nmode = \"0640\"\ncontrol_mode = \"0660\"\n"
      "[query]\nadmin_listen = \"unix:/run/kvidx/admin.sock\"\nadmin_group = \"kvidx-admin\"\n"
      "admin_socket_mode = \"0660\"\nadmin_tcp_listen = \"0.0.0.0:50052\"\n"
      "admin_allowed_clients = [\"operator\", \"spiffe://kvidx/ops\"]\n"
      "[tls]\ncert = \"/etc/kvidx/tls/server.pem\"\nkey = \"/etc/kvidx/tls/server.key\"\n"
      "client_ca = \"/etc/kvidx/tls/ca.pem\"\nrequire_client_cert = true\n",
      "s.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->segment_owner, "kvidx-ingest");
  EXPECT_EQ(c->control_mode, 0660u);
  EXPECT_EQ(c->admin_group, "kvidx-admin");
  EXPECT_EQ(c->admin_tcp_listen, "0.0.0.0:50052");
  EXPECT_EQ(c->admin_allowed_clients, (std::vector<std::string>{"operator", "spiffe://kvidx/ops"}));
  EXPECT_EQ(c->tls_client_ca, "/etc/kvidx/tls/ca.pem");
  EXPECT_TRUE(c->tls_require_client_cert);
  // Defaults: segment 0640, admin on a unix socket, no admin over TCP, no TLS.
  auto d = ParseConfig("", "<defaults>");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->segment_mode, 0640u);
  EXPECT_EQ(d->admin_listen, "unix:/run/kvidx/admin.sock");
  EXPECT_TRUE(d->admin_tcp_listen.empty());
  // Admin over TCP without mutual TLS and an allow-list is refused.
  for (const char* text :
       {"[query]\nadmin_tcp_listen = \"0.0.0.0:50052\"\n",
        "[query]\nadmin_tcp_listen = \"0.0.0.0:50052\"\n[tls]\ncert = \"a\"\nkey = \"b\"\n"
        "client_ca = \"c\"\n",
        "[tls]\ncert = \"a\"\n", "[tls]\nrequire_client_cert = true\n",
        "[segment]\nmode = \"0999\"\n", "[query]\nadmin_allowed_clients = [1]\n"}) {
    EXPECT_FALSE(ParseConfig(text, "bad.toml").ok()) << text;
  }
  EXPECT_EQ(*ResolveOwner(""), geteuid());
  EXPECT_EQ(*ResolveOwner("0"), 0u);
  EXPECT_EQ(*ResolveOwner("root"), 0u);
  EXPECT_FALSE(ResolveOwner("no-such-user-kvidx").ok());
}

// The configuration README.md shows parses, every key of it known.
TEST(ConfigTest, TheReadmeExampleParses) {
  std::ifstream in(std::string(KVIDX_SOURCE_ROOT) + "/README.md");
  std::string line, toml;
  bool inside = false;
  while (std::getline(in, line)) {
    if (line == "```toml") {
      inside = true;
      continue;
    }
    if (inside && line == "```") break;
    if (inside) toml += line + "\n";
  }
  ASSERT_FALSE(toml.empty());
  auto c = ParseConfig(toml, "README.md");
  EXPECT_TRUE(c.ok()) << c.status();
}

TEST(ConfigTest, EnvironmentOverrides) {
  setenv("KVIDX_SEGMENT", "from-env", 1);
  setenv("KVIDX_WORKERS", "5", 1);
  auto c = ParseConfig(kSample, "sample.toml");
  unsetenv("KVIDX_SEGMENT");
  unsetenv("KVIDX_WORKERS");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->segment, "from-env");
  EXPECT_EQ(c->workers, 5u);
  setenv("KVIDX_WORKERS", "99", 1);  // past what the control area holds
  EXPECT_FALSE(ParseConfig(kSample, "sample.toml").ok());
  setenv("KVIDX_WORKERS", "five", 1);
  EXPECT_FALSE(ParseConfig(kSample, "sample.toml").ok());
  unsetenv("KVIDX_WORKERS");
}

TEST(ConfigTest, OwnerWorkerIsStableAndSpreads) {
  EXPECT_EQ(OwnerWorker("pod-a", 0, 1), 0u);
  EXPECT_EQ(OwnerWorker("pod-a", 0, 4), OwnerWorker("pod-a", 0, 4));
  int counts[4] = {0, 0, 0, 0};
  for (int i = 0; i < 400; ++i) ++counts[OwnerWorker("pod-" + std::to_string(i), 0, 4)];
  for (int c : counts) EXPECT_GT(c, 60);
}

TEST(ConfigTest, EngineHashChecksNameAKnownAlgorithm) {
  auto ok =
      ParseConfig("[[model]]\nname = \"m\"\nblock_size = 16\nengine_hash = \"sha256_cbor\"\n", "t");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->models[0].engine_hash_seed, "vllm-none-hash");  // vLLM's fixed default
  EXPECT_EQ(ok->models[0].hash_check_every, 8u);
  auto bad =
      ParseConfig("[[model]]\nname = \"m\"\nblock_size = 16\nengine_hash = \"sha256\"\n", "t");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("engine_hash"), std::string::npos) << bad.status();
}

TEST(ConfigTest, FleetTomlParsesBackToTheSameFleet) {
  ModelConfig m;
  m.name = "llama";
  m.block_size = 32;
  m.lora_names = {{1, "sql"}, {7, "chat \"quoted\""}};
  m.engine_hash = "sha256_cbor";
  m.engine_hash_seed = "0";
  m.hash_check_every = 3;
  PublisherConfig a;
  a.pod = "pod-0";
  a.dp_rank = 3;
  a.model = "llama";
  a.endpoint = "tcp://10.0.0.1:5557";
  a.replay_endpoint = "tcp://10.0.0.1:5558";
  a.topic = "kv@";
  a.dialect = Dialect::kSglang;
  a.quota_pairs = 1000;
  a.private_engine_hashes = true;
  PublisherConfig b = a;
  b.pod = "pod-1";
  b.bind = true;
  b.replay_endpoint = "";
  b.dialect = Dialect::kKvbm;
  // The bind needs its port in the allow-list, as any configuration would.
  auto c = ParseConfig("[ingest]\nbind_tcp_ports = \"5557\"\n" + FleetToml({m}, {a, b}), "fleet");
  ASSERT_TRUE(c.ok()) << c.status() << "\n" << FleetToml({m}, {a, b});
  ASSERT_EQ(c->models.size(), 1u);
  EXPECT_EQ(c->models[0].block_size, 32u);
  EXPECT_EQ(c->models[0].lora_names, m.lora_names);
  EXPECT_EQ(c->models[0].engine_hash, "sha256_cbor");
  EXPECT_EQ(c->models[0].engine_hash_seed, "0");
  EXPECT_EQ(c->models[0].hash_check_every, 3u);
  ASSERT_EQ(c->publishers.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const PublisherConfig& want = i == 0 ? a : b;
    const PublisherConfig& got = c->publishers[i];
    EXPECT_EQ(got.pod, want.pod);
    EXPECT_EQ(got.dp_rank, want.dp_rank);
    EXPECT_EQ(got.endpoint, want.endpoint);
    EXPECT_EQ(got.replay_endpoint, want.replay_endpoint);
    EXPECT_EQ(got.topic, want.topic);
    EXPECT_EQ(got.dialect, want.dialect);
    EXPECT_EQ(got.bind, want.bind);
    EXPECT_EQ(got.quota_pairs, want.quota_pairs);
    EXPECT_EQ(got.private_engine_hashes, want.private_engine_hashes);
  }
}

}  // namespace
}  // namespace kvidx::config

namespace kvidx::config {
namespace {
// The configuration meson install puts beside the units parses, and says what they need.
TEST(ConfigTest, TheInstalledConfigurationParses) {
  auto c = LoadConfig(std::string(KVIDX_SOURCE_ROOT) + "/systemd/kvidx.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->segment_owner, "kvidx-ingest");
  EXPECT_EQ(c->segment_mode, 0640u);
  EXPECT_EQ(c->admin_listen, "unix:/run/kvidx/admin.sock");
  EXPECT_EQ(c->admin_group, "kvidx-admin");
}
}  // namespace
}  // namespace kvidx::config
