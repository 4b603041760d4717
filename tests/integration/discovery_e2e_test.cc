// DNS discovery end to end: a real DNS server (dnsmasq) answers for a headless-service-like
// name with two engine addresses (kvidx-sim on 127.0.0.2 and 127.0.0.3, two data-parallel ranks
// each); two kvidx-ingest workers find, register and stream them; the test changes the records
// and takes the server away, and watches the publishers follow.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/dns_server.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

// A TCP port free on both addresses (and the next three: two ranks, PUB and replay each).
int FreeTcpPorts() {
  for (int attempt = 0; attempt < 50; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7F000002);
    socklen_t len = sizeof(a);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    const int base = ntohs(a.sin_port);
    close(fd);
    bool all_free = base > 0 && base + 3 < 65536;
    for (uint32_t host : {0x7F000002u, 0x7F000003u}) {
      for (int k = 0; k < 4 && all_free; ++k) {
        int t = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_in b{};
        b.sin_family = AF_INET;
        b.sin_addr.s_addr = htonl(host);
        b.sin_port = htons(static_cast<uint16_t>(base + k));
        all_free = bind(t, reinterpret_cast<sockaddr*>(&b), sizeof(b)) == 0;
        close(t);
      }
    }
    if (all_free) return base;
  }
  return 0;
}

std::set<std::string> Pods(v1::KvIndex::Stub& stub, std::map<std::string, v1::Pod>* all = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListPodsResponse resp;
  std::set<std::string> out;
  if (!stub.ListPods(&ctx, {}, &resp).ok()) return {"<unreachable>"};
  for (const v1::Pod& p : resp.pods()) {
    const std::string id = p.pod() + "/" + std::to_string(p.dp_rank());
    out.insert(id);
    if (all != nullptr) (*all)[id] = p;
  }
  return out;
}

TEST(DiscoveryE2eTest, PublishersFollowTheRecordsAndSurviveAnOutage) {
  const std::string dir = "/tmp/kvidx-disc-" + std::to_string(getpid());
  mkdir(dir.c_str(), 0755);
  const std::string segment = "kvidx-disc-" + std::to_string(getpid());
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
  const int base = FreeTcpPorts();
  ASSERT_GT(base, 0);
  std::vector<std::unique_ptr<Process>> engines;
  for (const char* host : {"127.0.0.2", "127.0.0.3"}) {
    engines.push_back(std::make_unique<Process>(
        std::vector<std::string>{BuildPath("tools/kvidx-sim"), "--pods", "1", "--dp", "2", "--host",
                                 host, "--base-port", std::to_string(base), "--requests", "100000",
                                 "--rate", "60", "--cache-blocks", "300", "--model", "dm",
                                 "--config-out", dir + "/sim-" + host + ".toml"},
        dir + "/sim-" + host + ".log"));
  }
  DnsServer dns(dir);
  dns.Start("127.0.0.2 kv.test\n127.0.0.3 kv.test\n");
  const std::string config = dir + "/kvidx.toml";
  std::ofstream(config)
      << "[segment]\nname = \"" << segment
      << "\"\nblocks = 50000\npairs = 200000\npublishers = 16\nnamespaces = 4\nstripes = 32\n"
      << "[ingest]\nworkers = 2\nreconnect_initial_ms = 100\n"
      << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\nadmin_listen = \"off\"\n"
      << "[[model]]\nname = \"dm\"\nblock_size = 16\n"
      << "[[discovery]]\nname = \"kv.test\"\nmodel = \"dm\"\npub_port = " << base
      << "\nreplay_port = " << base + 1 << "\ndp_ranks = 2\ndp_port_stride = 2\n"
      << "interval_ms = 200\ndrop_after_misses = 2\nserver = \"" << dns.server() << "\"\n";
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    workers.push_back(std::make_unique<Process>(
        std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", config, "--worker",
                                 std::to_string(w)},
        dir + "/w" + std::to_string(w) + ".log"));
  }
  Process query(
      {BuildPath("query/kvidx-query"), "--config", config, "--port-file", dir + "/query.port"},
      dir + "/query.log");
  std::istringstream ports(WaitForFile(dir + "/query.port", std::chrono::milliseconds(30000)));
  int grpc_port = 0;
  ports >> grpc_port;
  ASSERT_GT(grpc_port, 0) << query.Log();
  auto stub = v1::KvIndex::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port),
                                                       grpc::InsecureChannelCredentials()));
  const std::set<std::string> both = {"kv-127-0-0-2/0", "kv-127-0-0-2/1", "kv-127-0-0-3/0",
                                      "kv-127-0-0-3/1"};
  // Found, registered by their owning workers, and streaming: every rank's batches arrive.
  std::map<std::string, v1::Pod> pods;
  ASSERT_TRUE(WaitFor(
      [&] {
        pods.clear();
        if (Pods(*stub, &pods) != both) return false;
        for (const auto& [id, p] : pods)
          if (p.counters().at("batches") == 0) return false;
        return true;
      },
      std::chrono::milliseconds(30000)))
      << workers[0]->Log() << workers[1]->Log() << dns.Log();
  EXPECT_EQ(pods["kv-127-0-0-3/1"].endpoint(), "tcp://127.0.0.3:" + std::to_string(base + 2));
  EXPECT_EQ(pods["kv-127-0-0-3/1"].replay_endpoint(),
            "tcp://127.0.0.3:" + std::to_string(base + 3));
  std::set<uint32_t> owners;
  for (const auto& [id, p] : pods) owners.insert(p.worker());
  EXPECT_EQ(owners.size(), 2u) << "both workers own some of the four";
  // An address leaves the records: after two answers without it, its ranks are gone.
  dns.SetHosts("127.0.0.2 kv.test\n");
  const std::set<std::string> one = {"kv-127-0-0-2/0", "kv-127-0-0-2/1"};
  ASSERT_TRUE(WaitFor([&] { return Pods(*stub) == one; }, std::chrono::milliseconds(20000)))
      << workers[0]->Log() << workers[1]->Log();
  // The DNS server goes away: resolutions fail, and nothing is dropped.
  const int dns_port = dns.port();
  dns.Kill();
  auto failures = [&] {
    size_t n = 0;
    for (auto& w : workers) {
      const std::string log = w->Log();
      for (size_t at = log.find("resolution failed"); at != std::string::npos;
           at = log.find("resolution failed", at + 1))
        ++n;
    }
    return n;
  };
  ASSERT_TRUE(WaitFor([&] { return failures() >= 6; }, std::chrono::milliseconds(30000)));
  EXPECT_EQ(Pods(*stub), one);
  // It comes back with both addresses: the second engine is found again.
  dns.Start("127.0.0.2 kv.test\n127.0.0.3 kv.test\n", dns_port);
  EXPECT_TRUE(WaitFor([&] { return Pods(*stub) == both; }, std::chrono::milliseconds(30000)))
      << dns.Log();
  for (auto* p : {&query}) p->Signal(SIGTERM);
  for (auto& w : workers) w->Signal(SIGTERM);
  for (auto& e : engines) e->Signal(SIGTERM);
  EXPECT_EQ(query.Wait(), 0);
  for (auto& w : workers) w->Wait();
  for (auto& e : engines) e->Wait();
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
}

}  // namespace
}  // namespace kvidx::testing
