// Extra keys and cache salts end to end: an independent Python publisher
// (tests/integration/extra_keys_peer.py) stores multimodal-like and salted prompts from three
// engines (vLLM map events, vLLM arrays, SGLang with metadata); a real kvidx-ingest keys them and
// a real kvidx-query answers lookups over gRPC. The index must hold exactly the keys the peer
// computed, and a salted or multimodal prompt must match itself and never its bare twin.
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/prefix_index.h"
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

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

class ExtraKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/kvidx-xk-" + std::to_string(getpid());
    mkdir(dir_.c_str(), 0755);
    segment_ = "kvidx-xk-" + std::to_string(getpid());
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
    peer_ = std::make_unique<Process>(
        std::vector<std::string>{
            "/usr/bin/python3",
            std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/extra_keys_peer.py",
            dir_ + "/ports.txt", dir_ + "/expected.txt"},
        dir_ + "/peer.log");
    std::istringstream ports(WaitForFile(dir_ + "/ports.txt", std::chrono::milliseconds(30000)));
    std::ofstream cfg(dir_ + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment_
        << "\"\nblocks = 4000\npairs = 8000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 1000\nreconnect_initial_ms = 100\n"
        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\nadmin_listen = \"off\"\n"
        << "[[model]]\nname = \"xk\"\nblock_size = 4\n";
    std::string pod;
    int pub = 0, router = 0;
    while (ports >> pod >> pub >> router) {
      cfg << "[[publisher]]\npod = \"" << pod << "\"\nmodel = \"xk\"\ndialect = \""
          << (pod == "salted" ? "sglang" : "vllm") << "\"\nendpoint = \"tcp://127.0.0.1:" << pub
          << "\"\nreplay_endpoint = \"tcp://127.0.0.1:" << router << "\"\n";
    }
    cfg.close();
    worker_ = std::make_unique<Process>(std::vector<std::string>{BuildPath("ingest/kvidx-ingest"),
                                                                 "--config", dir_ + "/kvidx.toml"},
                                        dir_ + "/worker.log");
    query_ = std::make_unique<Process>(
        std::vector<std::string>{BuildPath("query/kvidx-query"), "--config", dir_ + "/kvidx.toml",
                                 "--port-file", dir_ + "/query.port"},
        dir_ + "/query.log");
  }
  void TearDown() override {
    for (Process* p : {query_.get(), worker_.get(), peer_.get()}) {
      if (p != nullptr) p->Signal(SIGTERM);
    }
    for (Process* p : {query_.get(), worker_.get(), peer_.get()}) {
      if (p != nullptr) p->Wait();
    }
    index::Segment::Remove(segment_);
    control::ControlArea::Remove(control::ControlName(segment_));
  }

  std::string dir_, segment_;
  std::unique_ptr<Process> peer_, worker_, query_;
};

TEST_F(ExtraKeysTest, SaltedAndMultimodalPromptsMatchOnlyThemselves) {
  std::istringstream expected(
      WaitForFile(dir_ + "/expected.txt", std::chrono::milliseconds(60000)));
  std::set<uint64_t> want;
  std::string image;
  std::string what, value;
  while (expected >> what >> value) {
    if (what == "extra") {
      std::string hex;
      expected >> hex;
      image = FromHex(hex);
    } else {
      want.insert(std::stoull(value, nullptr, 16));
    }
  }
  ASSERT_EQ(want.size(), 10u) << peer_->Log();
  ASSERT_FALSE(image.empty());
  // Every block lands under the key the peer computed on its own.
  std::set<uint64_t> got;
  bool same = WaitFor(
      [&] {
        got.clear();
        auto seg = index::Segment::Attach(segment_, index::Segment::Access::kReadOnly);
        if (!seg.ok()) return false;
        index::PrefixIndex idx(seg->get());
        for (const auto& e : idx.Dump()) got.insert(e.key);
        return got == want;
      },
      std::chrono::milliseconds(20000));
  ASSERT_TRUE(same) << "index holds " << got.size() << " keys, the peer " << want.size() << "\n"
                    << worker_->Log();

  std::istringstream port(WaitForFile(dir_ + "/query.port", std::chrono::milliseconds(30000)));
  int grpc_port = 0;
  port >> grpc_port;
  ASSERT_NE(grpc_port, 0) << query_->Log();
  auto stub = v1::KvIndex::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port),
                                                       grpc::InsecureChannelCredentials()));
  // The pods matching a lookup of `tokens`, with what it names for block 0.
  auto lookup = [&](const std::vector<uint32_t>& tokens, const std::string& salt,
                    const std::vector<std::string>& extra, grpc::Status* status = nullptr) {
    v1::LookupRequest req;
    v1::LookupQuery* q = req.add_queries();
    q->mutable_namespace_()->set_model("xk");
    for (uint32_t t : tokens) q->mutable_tokens()->add_ids(t);
    q->set_cache_salt(salt);
    for (const std::string& e : extra) q->add_block_extra(e);
    grpc::ClientContext ctx;
    v1::LookupResponse resp;
    grpc::Status st = stub->Lookup(&ctx, req, &resp);
    if (status != nullptr) *status = st;
    std::map<std::string, uint32_t> pods;
    if (!st.ok()) return pods;
    for (const auto& m : resp.results(0).matches()) pods[m.pod()] = m.matched_blocks();
    return pods;
  };
  using Pods = std::map<std::string, uint32_t>;
  const auto T = Range(100, 8), U = Range(200, 8), V = Range(300, 8);
  // Multimodal-like: the image's extra bytes on block 0 select "mm"; the bare prompt "plain".
  EXPECT_EQ(lookup(T, "", {image}), (Pods{{"mm", 2}}));
  EXPECT_EQ(lookup(T, "", {}), (Pods{{"plain", 2}}));
  // The image on block 1 instead is another prompt: only the bare block 0 matches.
  EXPECT_EQ(lookup(T, "", {"", image}), (Pods{{"plain", 1}}));
  // SGLang's salt: only the salted lookup finds it; the bare one finds the bare twin.
  EXPECT_EQ(lookup(U, "tenant-a", {}), (Pods{{"salted", 2}}));
  EXPECT_EQ(lookup(U, "", {}), (Pods{{"plain", 2}}));
  EXPECT_EQ(lookup(U, "tenant-z", {}), Pods{});
  // vLLM's cache_salt field without extra_keys keys block 0 the same way.
  EXPECT_EQ(lookup(V, "tenant-b", {}), (Pods{{"mm", 2}}));
  EXPECT_EQ(lookup(V, "", {}), Pods{});
  // The salt spelled as block 0's extra bytes is the same key.
  EXPECT_EQ(lookup(V, "", {std::string("\x91\xa8tenant-b")}), (Pods{{"mm", 2}}));
  // Refusals: a salt beside block 0's extra bytes; more entries than blocks.
  grpc::Status st;
  lookup(U, "tenant-a", {image}, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("cache_salt"), std::string::npos) << st.error_message();
  lookup(U, "", {"", "", image}, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("block_extra"), std::string::npos) << st.error_message();
}

}  // namespace
}  // namespace kvidx::testing
