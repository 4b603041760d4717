// NVIDIA KVBM end to end: an independent Python publisher (tests/integration/kvbm_peer.py)
// runs one endpoint carrying two KVBM instances whose events alternate, in every encoding the
// spec lists. The real kvidx-ingest keeps each instance apart (the configured pod and
// "<pod>#1") without resyncing, keeps each lineage hash's position, and kvidx-query answers a
// kvbm_hashes lookup with each holder's deepest held position. A Shutdown drops its instance
// only; a new instance takes the configured pod's slot.
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

struct Published {
  std::string seq;
  uint32_t position;
  std::string u128;  // 16 bytes, big-endian
};

std::vector<Published> ReadListing(const std::string& text) {
  std::vector<Published> out;
  std::istringstream in(text);
  Published p;
  std::string hex;
  while (in >> p.seq >> p.position >> hex) {
    p.u128.clear();
    for (size_t i = 0; i + 1 < hex.size(); i += 2)
      p.u128.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    out.push_back(p);
  }
  return out;
}

class KvbmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/kvidx-kvbm-" + std::to_string(getpid());
    mkdir(dir_.c_str(), 0755);
    segment_ = "kvidx-kvbm-" + std::to_string(getpid());
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
  }
  void TearDown() override {
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
  }
  // pod -> (matched_blocks, kvbm_instance) of a lookup of `hashes` of sequence `seq`.
  std::map<std::string, std::pair<uint32_t, std::string>> Lookup(
      v1::KvIndex::Stub& stub, const std::vector<Published>& hashes, const std::string& seq,
      bool struct_form = false, v1::LookupResult* result = nullptr) {
    v1::LookupRequest req;
    v1::LookupQuery* q = req.add_queries();
    q->mutable_namespace_()->set_model("km");
    for (const Published& p : hashes) {
      if (p.seq != seq) continue;
      v1::KvbmHash* h = q->mutable_kvbm_hashes()->add_hashes();
      if (!struct_form) {
        h->set_u128(p.u128);
        continue;
      }
      // The struct form of the same hash: its fields as the u128 carries them (mode 0 here).
      uint64_t hi = 0, lo = 0;
      for (int i = 0; i < 8; ++i) hi = (hi << 8) | static_cast<uint8_t>(p.u128[i]);
      for (int i = 8; i < 16; ++i) lo = (lo << 8) | static_cast<uint8_t>(p.u128[i]);
      const uint64_t mask = (uint64_t{1} << 59) - 1;
      h->set_current(lo & mask);
      h->set_parent(((hi << 5) | (lo >> 59)) & mask);
      h->set_position(p.position);
    }
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    std::map<std::string, std::pair<uint32_t, std::string>> out;
    if (!stub.Lookup(&ctx, req, &resp).ok() || resp.results_size() != 1) return out;
    if (result != nullptr) *result = resp.results(0);
    for (const auto& m : resp.results(0).matches())
      out[m.pod()] = {m.matched_blocks(), m.kvbm_instance()};
    return out;
  }
  v1::Pod GetPod(v1::KvIndex::Stub& stub, const std::string& name) {
    v1::GetPodRequest req;
    req.set_pod(name);
    grpc::ClientContext ctx;
    v1::Pod p;
    EXPECT_TRUE(stub.GetPod(&ctx, req, &p).ok()) << name;
    return p;
  }
  std::string dir_, segment_;
};

TEST_F(KvbmTest, InstancesApartDeepestPositionsAnswered) {
  Process peer({"/usr/bin/python3",
                std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/kvbm_peer.py", dir_},
               dir_ + "/peer.log");
  std::istringstream ports(WaitForFile(dir_ + "/ports.txt", std::chrono::milliseconds(30000)));
  int pub = 0, router = 0;
  ports >> pub >> router;
  ASSERT_NE(pub, 0) << peer.Log();
  {
    std::ofstream cfg(dir_ + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment_
        << "\"\nblocks = 4000\npairs = 8000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 1000\nreconnect_initial_ms = 100\n"
        << "max_kvbm_instances = 2\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\nadmin_listen = \"off\"\n"
        << "[[model]]\nname = \"km\"\nblock_size = 16\nkey_by_engine_hash = true\n"
        << "[[publisher]]\npod = \"kv\"\nmodel = \"km\"\ndialect = \"kvbm\"\ntopic = \"kvbm\"\n"
        << "endpoint = \"tcp://127.0.0.1:" << pub
        << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << router << "\"\n";
  }
  auto start_worker = [&] {
    return std::make_unique<Process>(std::vector<std::string>{BuildPath("ingest/kvidx-ingest"),
                                                              "--config", dir_ + "/kvidx.toml"},
                                     dir_ + "/worker.log");
  };
  std::unique_ptr<Process> worker = start_worker();
  Process query({BuildPath("query/kvidx-query"), "--config", dir_ + "/kvidx.toml", "--port-file",
                 dir_ + "/query.port"},
                dir_ + "/query.log");
  std::istringstream port(WaitForFile(dir_ + "/query.port", std::chrono::milliseconds(30000)));
  int grpc_port = 0;
  port >> grpc_port;
  ASSERT_NE(grpc_port, 0) << query.Log();
  auto stub = v1::KvIndex::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port),
                                                       grpc::InsecureChannelCredentials()));
  const std::vector<Published> hashes =
      ReadListing(WaitForFile(dir_ + "/phase1.txt", std::chrono::milliseconds(60000)));
  ASSERT_EQ(hashes.size(), 7u) << peer.Log();
  const std::string a = "4660", b = "1267650600228229401496703205381";  // 2^100 + 5

  // Phase 1: A holds S to position 128 (129 blocks), B to position 32; T only B, at 16.
  std::map<std::string, std::pair<uint32_t, std::string>> got;
  const std::map<std::string, std::pair<uint32_t, std::string>> want1 = {{"kv", {129, a}},
                                                                         {"kv#1", {33, b}}};
  ASSERT_TRUE(WaitFor([&] { return (got = Lookup(*stub, hashes, "S")) == want1; },
                      std::chrono::milliseconds(30000)))
      << got.size() << "\n"
      << worker->Log();
  v1::LookupResult r;
  EXPECT_EQ(Lookup(*stub, hashes, "S", /*struct_form=*/true, &r), want1);
  EXPECT_EQ(r.input(), "kvbm_hashes");
  EXPECT_EQ(r.prompt_blocks(), 129u);
  EXPECT_EQ(r.block_size(), 16u);
  EXPECT_EQ(r.best().pod(), "kv");
  EXPECT_EQ(r.best().matched_tokens(), 129u * 16);
  EXPECT_EQ(r.best().gpu_blocks(), 129u);
  EXPECT_EQ((Lookup(*stub, hashes, "T")),
            (std::map<std::string, std::pair<uint32_t, std::string>>{{"kv#1", {17, b}}}));
  // The Python client asks the same, with the lineage hashes as u128 ints.
  {
    std::ofstream py(dir_ + "/client.py");
    py << "import sys\nsys.path.insert(0, '" << KVIDX_SOURCE_ROOT << "/clients/python')\n"
       << "from kvidx_client import KvidxClient\n"
       << "hs = [int(l.split()[2], 16) for l in open(sys.argv[2]) if l.startswith('S ')]\n"
       << "with KvidxClient(sys.argv[1]) as kv:\n"
       << "    r = kv.lookup('km', kvbm_hashes=hs)\n"
       << "    for m in r.matches: print(m.pod, m.matched_blocks, m.kvbm_instance)\n";
  }
  Process client({"/usr/bin/python3", dir_ + "/client.py", "127.0.0.1:" + std::to_string(grpc_port),
                  dir_ + "/phase1.txt"},
                 dir_ + "/client.log");
  ASSERT_EQ(client.Wait(std::chrono::milliseconds(60000)), 0) << client.Log();
  EXPECT_EQ(client.Log(), "kv 129 " + a + "\nkv#1 33 " + b + "\n");
  // And kvidxctl, with the hashes in hex.
  std::string hex;
  for (const Published& p : hashes) {
    if (p.seq != "S") continue;
    for (unsigned char c : p.u128) {
      char b[3];
      std::snprintf(b, sizeof b, "%02x", c);
      hex += b;
    }
    hex += ",";
  }
  Process ctl({BuildPath("tools/kvidxctl"), "--server", "127.0.0.1:" + std::to_string(grpc_port),
               "lookup", "--model", "km", "--kvbm", hex},
              dir_ + "/ctl.log");
  ASSERT_EQ(ctl.Wait(), 0) << ctl.Log();
  EXPECT_NE(ctl.Log().find("prompt: 129 blocks of 16 tokens; 2 pod(s) hold a prefix"),
            std::string::npos)
      << ctl.Log();
  EXPECT_NE(ctl.Log().find("KVBM instance " + b), std::string::npos) << ctl.Log();
  v1::Pod kv = GetPod(*stub, "kv");
  EXPECT_EQ(kv.counters().at("resyncs"), 0u);  // alternating instances resync nothing
  EXPECT_EQ(kv.counters().at("kvbm_instances"), 2u);
  EXPECT_EQ(kv.kvbm_instance(), a);
  EXPECT_EQ(kv.pairs(), 4u);
  v1::Pod kv1 = GetPod(*stub, "kv#1");
  EXPECT_EQ(kv1.kvbm_instance(), b);
  EXPECT_EQ(kv1.pairs(), 3u);
  EXPECT_EQ(kv1.freshness().stream(), "streaming");  // the endpoint's stream, mirrored

  // The worker is killed and restarted: it finds both instances where they were (slot 0 and
  // "kv#1" in the segment), checks the stream's continuity and goes on without a resync.
  worker->Signal(SIGKILL);
  ASSERT_NE(worker->Wait(), -1);
  worker = start_worker();
  ASSERT_TRUE(WaitFor(
      [&] {
        v1::Pod p = GetPod(*stub, "kv");
        return p.freshness().stream() == "streaming" && p.freshness().connected();
      },
      std::chrono::milliseconds(30000)))
      << worker->Log();
  EXPECT_EQ(Lookup(*stub, hashes, "S"), want1);

  // Phase 2: A shuts down (its blocks go, B's stay); B removes S at 32.
  { std::ofstream(dir_ + "/go2.txt") << "go\n"; }
  const std::map<std::string, std::pair<uint32_t, std::string>> want2 = {{"kv#1", {17, b}}};
  ASSERT_TRUE(WaitFor([&] { return (got = Lookup(*stub, hashes, "S")) == want2; },
                      std::chrono::milliseconds(30000)))
      << got.size() << "\n"
      << worker->Log();
  kv = GetPod(*stub, "kv");
  EXPECT_EQ(kv.pairs(), 0u);
  EXPECT_EQ(kv.kvbm_instance(), "");
  EXPECT_EQ(kv.counters().at("kvbm_instances"), 1u);
  EXPECT_EQ(kv.counters().at("resyncs"), 0u);

  // Phase 3: a new instance takes the configured pod's slot.
  { std::ofstream(dir_ + "/go3.txt") << "go\n"; }
  const std::map<std::string, std::pair<uint32_t, std::string>> want3 = {{"kv", {17, "77"}},
                                                                         {"kv#1", {17, b}}};
  ASSERT_TRUE(WaitFor([&] { return (got = Lookup(*stub, hashes, "S")) == want3; },
                      std::chrono::milliseconds(30000)))
      << got.size() << "\n"
      << worker->Log();
  EXPECT_EQ(GetPod(*stub, "kv").counters().at("kvbm_instances"), 2u);
  // A third live instance is one more than max_kvbm_instances: refused and counted, its
  // blocks nowhere.
  ASSERT_TRUE(WaitFor([&] { return GetPod(*stub, "kv").counters().at("kvbm_refused") == 1; },
                      std::chrono::milliseconds(30000)))
      << worker->Log();
  EXPECT_EQ(GetPod(*stub, "kv").counters().at("kvbm_instances"), 2u);
  {
    v1::StatsResponse stats;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Stats(&ctx, {}, &stats).ok());
    EXPECT_EQ(stats.kvbm_instances(), 2u);
    EXPECT_EQ(stats.kvbm_refused(), 1u);
  }
  EXPECT_EQ((Lookup(*stub, hashes, "T")),
            (std::map<std::string, std::pair<uint32_t, std::string>>{{"kv#1", {17, b}}}));

  // Restarted with room for one instance only, the worker drops the publisher of the second.
  worker->Signal(SIGTERM);
  ASSERT_NE(worker->Wait(), -1);
  {
    std::ifstream in(dir_ + "/kvidx.toml");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    text.replace(text.find("max_kvbm_instances = 2"), 22, "max_kvbm_instances = 1");
    std::ofstream(dir_ + "/kvidx.toml") << text;
  }
  worker = start_worker();
  ASSERT_TRUE(WaitFor(
      [&] {
        v1::GetPodRequest req;
        req.set_pod("kv#1");
        grpc::ClientContext ctx;
        v1::Pod p;
        return stub->GetPod(&ctx, req, &p).error_code() == grpc::StatusCode::NOT_FOUND;
      },
      std::chrono::milliseconds(30000)))
      << worker->Log();
  EXPECT_EQ((Lookup(*stub, hashes, "S")),
            (std::map<std::string, std::pair<uint32_t, std::string>>{{"kv", {17, "77"}}}));

  // A flood of 2000 new instance ids: every one refused and counted, no publisher slot taken,
  // nothing of them indexed, and the held instance untouched.
  const uint64_t refused = GetPod(*stub, "kv").counters().at("kvbm_refused");
  { std::ofstream(dir_ + "/go4.txt") << "go\n"; }
  ASSERT_TRUE(
      WaitFor([&] { return GetPod(*stub, "kv").counters().at("kvbm_refused") == refused + 2000; },
              std::chrono::milliseconds(60000)))
      << GetPod(*stub, "kv").counters().at("kvbm_refused") << "\n"
      << worker->Log();
  {
    v1::ListPodsResponse pods;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ListPods(&ctx, {}, &pods).ok());
    EXPECT_EQ(pods.pods_size(), 1);
  }
  EXPECT_EQ((Lookup(*stub, hashes, "S")),
            (std::map<std::string, std::pair<uint32_t, std::string>>{{"kv", {17, "77"}}}));
  EXPECT_TRUE(Lookup(*stub, hashes, "T").empty());

  // A malformed hash is refused with a reason.
  v1::LookupRequest bad;
  v1::LookupQuery* q = bad.add_queries();
  q->mutable_namespace_()->set_model("km");
  q->mutable_kvbm_hashes()->add_hashes()->set_u128("short");
  v1::LookupResponse resp;
  grpc::ClientContext ctx;
  grpc::Status st = stub->Lookup(&ctx, bad, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("kvbm_hashes[0]"), std::string::npos) << st.error_message();
  for (Process* p : {&query, worker.get(), &peer}) p->Signal(SIGTERM);
  for (Process* p : {&query, worker.get(), &peer}) p->Wait();
}

}  // namespace
}  // namespace kvidx::testing
