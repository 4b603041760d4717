// DNS discovery (ingest/discovery.h): the decision machine against a model over seeded random
// schedules of answers, refusals and outages, and the c-ares resolver against a real dnsmasq.
#include "ingest/discovery.h"

#include <sys/stat.h>

#include <random>
#include <set>

#include "gtest/gtest.h"

#include "tests/integration/dns_server.h"

namespace kvidx::ingest {
namespace {

TEST(DiscoveryStateTest, PodNamesComeFromAddresses) {
  EXPECT_EQ(DiscoveredPodName("vllm-", "10.0.0.5"), "vllm-10-0-0-5");
  EXPECT_EQ(DiscoveredPodName("e-", "fd00::1"), "e-fd00--1");
}

DiscoveredHosts Answer(std::vector<std::string> addresses) {
  DiscoveredHosts h;
  h.ok = true;
  for (const std::string& a : addresses) h.hosts.push_back({DiscoveredPodName("p-", a), a});
  return h;
}

TEST(DiscoveryStateTest, AFailedResolutionNeverDropsAPod) {
  DiscoveryState s(2);
  auto ch = s.Apply(Answer({"10.0.0.1", "10.0.0.2"}));
  EXPECT_EQ(ch.upsert.size(), 2u);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(s.Apply({false, {}, "timeout"}).empty());
  EXPECT_EQ(s.hosts().size(), 2u);
  EXPECT_TRUE(s.Apply(Answer({"10.0.0.1"})).empty());  // one miss of two
  ch = s.Apply(Answer({"10.0.0.1"}));
  ASSERT_EQ(ch.remove.size(), 1u);
  EXPECT_EQ(ch.remove[0], "p-10-0-0-2");
  ch = s.Apply(Answer({}));  // NXDOMAIN: the last one misses once
  EXPECT_TRUE(ch.empty());
  ch = s.Apply(Answer({"10.0.0.2"}));
  EXPECT_EQ(ch.remove, std::vector<std::string>{"p-10-0-0-1"});
  EXPECT_EQ(ch.upsert, (std::vector<DiscoveredHost>{{"p-10-0-0-2", "10.0.0.2"}}));
}

// The model: a pod is registered iff it was in some successful answer and fewer than K
// successful answers since its last appearance lacked it, at the address of that appearance
// (its first in the answer). The machine's changes, applied to a map, must give exactly that
// after every step; a registration is repeated only for a new address (an endpoint change).
TEST(DiscoveryStateTest, RandomSchedulesMatchTheModel) {
  const int schedules = 20000;
  for (int seed = 0; seed < schedules; ++seed) {
    std::mt19937 rng(seed);
    const uint32_t k = 1 + rng() % 4;
    DiscoveryState s(k);
    std::map<std::string, std::string> applied;  // what the worker would have registered
    struct Seen {
      uint32_t misses;
      std::string address;
    };
    std::map<std::string, Seen> model;
    const int steps = 5 + static_cast<int>(rng() % 40);
    for (int step = 0; step < steps; ++step) {
      DiscoveredHosts o;
      o.ok = rng() % 5 != 0;
      if (o.ok) {
        for (int n = static_cast<int>(rng() % 7); n > 0; --n) {  // pods may repeat
          o.hosts.push_back(
              {"pod-" + std::to_string(rng() % 5), "10.0.0." + std::to_string(rng() % 3)});
        }
      }
      const DiscoveryChanges ch = s.Apply(o);
      for (const std::string& pod : ch.remove) ASSERT_EQ(applied.erase(pod), 1u) << seed;
      for (const DiscoveredHost& h : ch.upsert) {
        ASSERT_TRUE(applied.count(h.pod) == 0 || applied[h.pod] != h.address)
            << "registered again at the same address, seed " << seed;
        applied[h.pod] = h.address;
      }
      if (o.ok) {
        for (auto& [pod, seen] : model) ++seen.misses;
        std::set<std::string> named;
        for (const DiscoveredHost& h : o.hosts) {
          if (!named.insert(h.pod).second) continue;  // its first address counts
          model[h.pod] = {0, h.address};
        }
        for (auto it = model.begin(); it != model.end();)
          it = it->second.misses >= k ? model.erase(it) : std::next(it);
      }
      std::map<std::string, std::string> expect;
      for (const auto& [pod, seen] : model) expect[pod] = seen.address;
      ASSERT_EQ(applied, expect) << "seed " << seed << " step " << step;
      ASSERT_EQ(s.hosts(), expect) << "seed " << seed;
    }
  }
}

class ResolverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/kvidx-dns-" + std::to_string(getpid());
    mkdir(dir_.c_str(), 0755);
    dns_ = std::make_unique<testing::DnsServer>(dir_);
  }
  void TearDown() override { dns_.reset(); }
  std::string dir_;
  std::unique_ptr<testing::DnsServer> dns_;
};

TEST_F(ResolverTest, AnswersNxdomainAndOutagesFromARealServer) {
  dns_->Start("127.0.0.2 kv.test\n127.0.0.3 kv.test\n10.1.2.3 other.test\n");
  DiscoveryOutcome o;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        o = ResolveA("kv.test", dns_->server(), 500);
        return o.ok;
      },
      std::chrono::milliseconds(10000)))
      << o.error << dns_->Log();
  EXPECT_EQ(o.addresses, (std::vector<std::string>{"127.0.0.2", "127.0.0.3"}));
  // The records change: the server re-reads its hosts file.
  dns_->SetHosts("127.0.0.3 kv.test\n");
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        o = ResolveA("kv.test", dns_->server(), 500);
        return o.ok && o.addresses == std::vector<std::string>{"127.0.0.3"};
      },
      std::chrono::milliseconds(10000)))
      << dns_->Log();
  // A name the server is authoritative for but does not have: answered, no addresses.
  o = ResolveA("nobody.test", dns_->server(), 500);
  EXPECT_TRUE(o.ok) << o.error;
  EXPECT_TRUE(o.addresses.empty());
  // The server gone: not an answer.
  const std::string server = dns_->server();
  dns_->Kill();
  o = ResolveA("kv.test", server, 300);
  EXPECT_FALSE(o.ok);
  EXPECT_FALSE(o.error.empty());
  EXPECT_FALSE(ResolveA("kv.test", "not a server", 300).ok);
}

TEST_F(ResolverTest, SrvTargetsAreHostsNamedByTheirFirstLabel) {
  dns_->Start("127.0.0.2 e0.kv.test\n127.0.0.3 e1.kv.test\n", 0,
              {"--srv-host=_kv._tcp.kv.test,e0.kv.test,5557",
               "--srv-host=_kv._tcp.kv.test,e1.kv.test,5557"});
  config::DiscoveryConfig d;
  d.name = "_kv._tcp.kv.test";
  d.mode = "srv";
  d.server = dns_->server();
  DiscoveredHosts h;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        h = Discover(d, 500);
        return h.ok;
      },
      std::chrono::milliseconds(10000)))
      << h.error << dns_->Log();
  EXPECT_EQ(h.hosts, (std::vector<DiscoveredHost>{{"e0", "127.0.0.2"}, {"e1", "127.0.0.3"}}));
  // e1 moves: the same pod at another address.
  dns_->SetHosts("127.0.0.2 e0.kv.test\n127.0.0.4 e1.kv.test\n");
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        h = Discover(d, 500);
        return h.ok && h.hosts.size() == 2 && h.hosts[1].address == "127.0.0.4";
      },
      std::chrono::milliseconds(10000)))
      << dns_->Log();
  d.mode = "a";
  d.name = "e0.kv.test";
  d.pod_prefix = "x-";
  h = Discover(d, 500);
  EXPECT_EQ(h.hosts, (std::vector<DiscoveredHost>{{"x-127-0-0-2", "127.0.0.2"}}));
}

}  // namespace
}  // namespace kvidx::ingest
