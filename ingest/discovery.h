// DNS discovery of engines ([[discovery]], config/config.h): a name (a Kubernetes headless
// service) resolved every interval with c-ares; each host becomes publishers.
//
// - DiscoveryState is the pure decision: from a sequence of resolution outcomes, which hosts to
//   register (new, or at a new address) and which to drop (absent from drop_after_misses
//   successful answers in a row). A failed resolution (timeout, SERVFAIL, refused) changes
//   nothing: a DNS outage never drops a pod. Tested by seeded simulation against a model.
// - ResolveA asks one DNS server (or the system's) for a name's A records.
// - Discoverer resolves on its own thread and queues the outcomes; the worker that owns the
//   publishers applies them on its poll tick (ingest/worker.cc).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

#include "config/config.h"

namespace kvidx::ingest {

struct DiscoveredHost {
  std::string pod;
  std::string address;
  bool operator==(const DiscoveredHost&) const = default;
};

struct DiscoveryOutcome {
  bool ok = false;                     // the server answered (possibly with no records)
  std::vector<std::string> addresses;  // when ok: A records, or SRV targets (ResolveSrv)
  std::string error;                   // when not
};

// What a successful answer names: pod -> address (a pod named twice keeps its first).
struct DiscoveredHosts {
  bool ok = false;
  std::vector<DiscoveredHost> hosts;
  std::string error;
};

struct DiscoveryChanges {
  std::vector<DiscoveredHost> upsert;  // register (a new host, or a host at a new address)
  std::vector<std::string> remove;     // pods to unregister
  bool empty() const { return upsert.empty() && remove.empty(); }
};

// The pod name of an address: prefix + the address with '.' and ':' as '-'.
std::string DiscoveredPodName(const std::string& prefix, const std::string& address);

class DiscoveryState {
 public:
  explicit DiscoveryState(uint32_t drop_after_misses) : drop_after_(drop_after_misses) {}
  DiscoveryChanges Apply(const DiscoveredHosts& o);
  // pod -> address of the hosts registered now.
  std::map<std::string, std::string> hosts() const;

 private:
  struct Known {
    std::string address;
    uint32_t misses = 0;
  };
  uint32_t drop_after_;
  std::map<std::string, Known> known_;
};

// The IPv4 addresses of `name` (sorted, unique) from `server` ("HOST:PORT"; "" = the system's
// resolvers). ok with no addresses for NXDOMAIN or no A records; not ok for no answer.
DiscoveryOutcome ResolveA(const std::string& name, const std::string& server, uint32_t timeout_ms);
// The targets of `name`'s SRV records (sorted, unique), as ResolveA answers.
DiscoveryOutcome ResolveSrv(const std::string& name, const std::string& server,
                            uint32_t timeout_ms);

// One round of a [[discovery]]: mode "a": a pod per A record, named from the address; mode
// "srv": a pod per SRV target, named by the target's first label, at its first A record (a
// target's new address is an endpoint change of the same pod). Any failed query fails the
// round.
DiscoveredHosts Discover(const config::DiscoveryConfig& d, uint32_t timeout_ms);

class Discoverer {
 public:
  explicit Discoverer(const config::DiscoveryConfig& config);
  ~Discoverer();
  Discoverer(const Discoverer&) = delete;
  Discoverer& operator=(const Discoverer&) = delete;

  const config::DiscoveryConfig& config() const { return config_; }
  // The outcomes since the last call, oldest first (at most 16 are kept).
  std::vector<DiscoveredHosts> Take();

 private:
  void Loop();

  config::DiscoveryConfig config_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<DiscoveredHosts> outcomes_;
  std::thread thread_;
};

}  // namespace kvidx::ingest
