// libFuzzer harness for Lookup request validation (issue 11): arbitrary bytes parsed as a
// kvidx.v1.LookupRequest (the protobuf wire format gRPC hands the service) and answered by the
// real KvIndexService over a real read-only mapping of a segment in which four pods hold chains
// of two namespaces. Whatever the bytes:
// - no crash, no sanitizer report, no unbounded allocation;
// - a refusal is INVALID_ARGUMENT or RESOURCE_EXHAUSTED and names its reason (ErrorDetail);
// - an answer has one result per query; each result's matches name registered pods, each once,
//   hold at most the prompt's blocks (and at most max_blocks when set), and the best is one of
//   them;
// - the same request answered twice gives the same bytes (no uninitialised or leaked state).
// KVIDX_FUZZ_WRITE_SEEDS=DIR writes well-formed requests to DIR and exits (scripts/fuzz.sh).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"
#include "control/control_area.h"
#include "index/block_key.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "query/service.h"

namespace {

using kvidx::index::PublisherId;

std::string g_name;
std::unique_ptr<kvidx::index::Segment> g_writer;  // kept mapped: the service reads the same pages
kvidx::query::KvIndexService* g_service = nullptr;
std::set<std::string> g_pods;

void Cleanup() {
  kvidx::index::Segment::Remove(g_name);
  kvidx::control::ControlArea::Remove(kvidx::control::ControlName(g_name));
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "lookup_fuzz: %s\n", what.c_str());
  std::abort();
}

void Populate(kvidx::index::PrefixIndex& idx) {
  auto base = idx.RegisterNamespace({.model = "fm", .block_size = 4});
  auto lora = idx.RegisterNamespace({.model = "fm", .lora_name = "a", .block_size = 2});
  if (!base.ok() || !lora.ok()) Die("namespaces");
  for (int p = 0; p < 4; ++p) {
    std::string pod = "pod-" + std::to_string(p);
    auto id = idx.RegisterPublisher({.pod = pod, .ns = *base});
    if (!id.ok()) Die("publisher");
    g_pods.insert(pod);
    // Pod p holds 8 * (p + 1) blocks of the chain 1, 2, 3, ... and a chain of its own.
    for (int chain = 0; chain < 2; ++chain) {
      const uint32_t blocks = chain == 0 ? 8 * (p + 1) : 5;
      std::vector<uint32_t> tokens;
      std::vector<uint64_t> hashes;
      for (uint32_t b = 0; b < blocks; ++b) {
        for (uint32_t t = 0; t < 4; ++t)
          tokens.push_back(chain == 0 ? b * 4 + t + 1 : 1000 * (p + 1) + b * 4 + t);
        hashes.push_back((uint64_t{1} << 40) * (chain + 1) + (p + 1) * 100000 + b);
      }
      kvidx::index::StoreRequest req;
      req.engine_hashes = hashes;
      req.tokens = tokens;
      if (!idx.Store(*id, req).ok()) Die("store");
    }
    std::vector<uint32_t> lt{7, 7, 8, 8, 9, 9};
    std::vector<uint64_t> lh{900 + uint64_t(p), 910 + uint64_t(p), 920 + uint64_t(p)};
    kvidx::index::StoreRequest lr;
    lr.ns = *lora;
    lr.engine_hashes = lh;
    lr.tokens = lt;
    if (!idx.Store(*id, lr).ok()) Die("store lora");
  }
}

void WriteSeeds(const std::string& dir) {
  std::vector<kvidx::v1::LookupRequest> seeds(7);
  auto tokens = [](kvidx::v1::LookupQuery* q, int n) {
    q->mutable_namespace_()->set_model("fm");
    for (int i = 1; i <= n; ++i) q->mutable_tokens()->add_ids(i);
  };
  tokens(seeds[0].add_queries(), 64);
  tokens(seeds[1].add_queries(), 130);
  seeds[1].mutable_queries(0)->set_max_blocks(3);
  auto* c = seeds[1].mutable_queries(0)->add_candidates();
  c->set_pod("pod-2");
  c->set_dp_rank(-1);
  auto* k = seeds[2].add_queries();
  k->mutable_namespace_()->set_model("fm");
  for (uint64_t key : kvidx::index::ChainBlockKeys(
           kvidx::index::NamespaceRoot("fm", ""), std::vector<uint32_t>{1, 2, 3, 4, 5, 6, 7, 8}, 4))
    k->mutable_block_keys()->add_keys(key);
  auto* l = seeds[3].add_queries();
  l->mutable_namespace_()->set_model("fm");
  l->mutable_namespace_()->set_lora_name("a");
  for (uint32_t t : {7, 7, 8, 8, 9, 9}) l->mutable_tokens()->add_ids(t);
  for (int i = 0; i < 5; ++i) tokens(seeds[4].add_queries(), 4 * i);
  seeds[5].add_queries()->mutable_namespace_()->set_model("no-such-model");
  auto* kv = seeds[6].add_queries();  // KVBM lineage hashes, both forms
  kv->mutable_namespace_()->set_model("fm");
  kv->mutable_kvbm_hashes()->add_hashes()->set_u128(std::string(16, '\x01'));
  auto* st = kv->mutable_kvbm_hashes()->add_hashes();
  st->set_current(42);
  st->set_parent(7);
  st->set_position(16);
  for (size_t i = 0; i < seeds.size(); ++i) {
    std::ofstream out(dir + "/lookup-" + std::to_string(i), std::ios::binary);
    out << seeds[i].SerializeAsString();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 in a string field is just a refusal
  if (const char* dir = std::getenv("KVIDX_FUZZ_WRITE_SEEDS")) {
    WriteSeeds(dir);
    std::exit(0);
  }
  g_name = "kvidx-lookup-fuzz-" + std::to_string(getpid());
  Cleanup();
  std::atexit(Cleanup);
  kvidx::index::Geometry g;
  g.blocks = 4096;
  g.pairs = 16384;
  g.publishers = 8;
  g.namespaces = 4;
  g.stripes = 16;
  auto writer = kvidx::index::Segment::Create(g_name, g);
  if (!writer.ok()) Die(writer.status().ToString());
  g_writer = std::move(*writer);
  kvidx::index::PrefixIndex idx(g_writer.get());
  Populate(idx);
  auto reader = kvidx::index::Segment::Attach(g_name, kvidx::index::Segment::Access::kReadOnly);
  auto control = kvidx::control::ControlArea::Open(kvidx::control::ControlName(g_name));
  if (!reader.ok() || !control.ok()) Die("attach");
  kvidx::config::Config c;
  c.segment = g_name;
  c.geometry = g;
  c.max_tokens = 2048;
  c.max_lookups_per_call = 16;
  c.models.push_back({.name = "fm", .block_size = 4});
  g_service = new kvidx::query::KvIndexService(c, std::move(*reader), std::move(*control));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvidx::v1::LookupRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  kvidx::v1::LookupResponse resp, again;
  grpc::Status st = g_service->Lookup(nullptr, &req, &resp);
  grpc::Status st2 = g_service->Lookup(nullptr, &req, &again);
  if (st.error_code() != st2.error_code() ||
      resp.SerializeAsString() != again.SerializeAsString()) {
    Die("two answers to one request differ");
  }
  if (!st.ok()) {
    if (st.error_code() != grpc::StatusCode::INVALID_ARGUMENT &&
        st.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
      Die("refused with code " + std::to_string(st.error_code()));
    }
    kvidx::v1::ErrorDetail d;
    if (!d.ParseFromString(st.error_details()) || d.reason().empty())
      Die("a refusal without reason");
    return 0;
  }
  if (resp.results_size() != req.queries_size()) Die("not one result per query");
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& r = resp.results(i);
    const auto& q = req.queries(i);
    std::set<std::pair<std::string, uint32_t>> seen;
    for (const auto& m : r.matches()) {
      if (g_pods.count(m.pod()) == 0) Die("a match names an unknown pod: " + m.pod());
      if (!seen.insert({m.pod(), m.dp_rank()}).second) Die("a pod matched twice");
      if (m.matched_blocks() == 0 || m.matched_blocks() > r.prompt_blocks())
        Die("a match holds more blocks than the prompt");
      if (q.max_blocks() > 0 && m.matched_blocks() > q.max_blocks()) Die("past max_blocks");
    }
    if (r.matches_size() > 0 && seen.count({r.best().pod(), r.best().dp_rank()}) == 0)
      Die("the best match is not a match");
  }
  return 0;
}
