#include "ingest/discovery.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <sys/select.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "absl/strings/str_cat.h"

#include "shared/clock.h"

namespace kvidx::ingest {

std::string DiscoveredPodName(const std::string& prefix, const std::string& address) {
  std::string pod = prefix + address;
  std::replace(pod.begin(), pod.end(), '.', '-');
  std::replace(pod.begin(), pod.end(), ':', '-');
  return pod;
}

DiscoveryChanges DiscoveryState::Apply(const DiscoveredHosts& o) {
  DiscoveryChanges ch;
  if (!o.ok) return ch;
  std::map<std::string, std::string> seen;  // pod -> its first address in the answer
  for (const DiscoveredHost& h : o.hosts) seen.emplace(h.pod, h.address);
  for (auto it = known_.begin(); it != known_.end();) {
    if (seen.count(it->first) != 0 || ++it->second.misses < drop_after_) {
      ++it;
      continue;
    }
    ch.remove.push_back(it->first);
    it = known_.erase(it);
  }
  for (const auto& [pod, address] : seen) {
    Known& k = known_[pod];
    k.misses = 0;
    if (k.address == address) continue;
    k.address = address;
    ch.upsert.push_back({pod, address});
  }
  return ch;
}

std::map<std::string, std::string> DiscoveryState::hosts() const {
  std::map<std::string, std::string> out;
  for (const auto& [pod, k] : known_) out[pod] = k.address;
  return out;
}

namespace {

struct Answer {
  bool done = false;
  int status = ARES_SUCCESS;
  std::set<std::string> addresses;
};

void OnSrvAnswer(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
  auto* a = static_cast<Answer*>(arg);
  a->done = true;
  a->status = status;
  if (status != ARES_SUCCESS) return;
  ares_srv_reply* srv = nullptr;
  a->status = ares_parse_srv_reply(abuf, alen, &srv);
  for (ares_srv_reply* r = srv; r != nullptr; r = r->next) a->addresses.insert(r->host);
  if (srv != nullptr) ares_free_data(srv);
}

void OnAnswer(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
  auto* a = static_cast<Answer*>(arg);
  a->done = true;
  a->status = status;
  if (status != ARES_SUCCESS) return;
  ares_addrttl ttls[64];
  int n = 64;
  hostent* host = nullptr;
  a->status = ares_parse_a_reply(abuf, alen, &host, ttls, &n);
  if (host != nullptr) ares_free_hostent(host);
  if (a->status != ARES_SUCCESS) return;
  for (int i = 0; i < n; ++i) {
    char text[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &ttls[i].ipaddr, text, sizeof(text)) != nullptr)
      a->addresses.insert(text);
  }
}

struct AresLibrary {
  AresLibrary() { ares_library_init(ARES_LIB_INIT_ALL); }
  ~AresLibrary() { ares_library_cleanup(); }
};

// One query of `type` for `name`, answered into a list by `parse`.
DiscoveryOutcome Query(const std::string& name, const std::string& server, uint32_t timeout_ms,
                       int type, ares_callback parse) {
  static AresLibrary library;
  DiscoveryOutcome out;
  ares_options opts{};
  opts.timeout = static_cast<int>(std::max<uint32_t>(timeout_ms / 2, 50));
  opts.tries = 2;
  ares_channel channel = nullptr;
  if (ares_init_options(&channel, &opts, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES) != ARES_SUCCESS) {
    out.error = "c-ares: cannot initialise a channel";
    return out;
  }
  if (!server.empty() && ares_set_servers_ports_csv(channel, server.c_str()) != ARES_SUCCESS) {
    ares_destroy(channel);
    out.error = absl::StrCat("c-ares: bad server '", server, "'");
    return out;
  }
  Answer answer;
  ares_query(channel, name.c_str(), ns_c_in, type, parse, &answer);
  const int64_t deadline = MonotonicNanos() + int64_t{timeout_ms} * 1'000'000;
  while (!answer.done && MonotonicNanos() < deadline) {
    fd_set readers, writers;
    FD_ZERO(&readers);
    FD_ZERO(&writers);
    const int nfds = ares_fds(channel, &readers, &writers);
    if (nfds == 0) break;
    timeval tv{0, 50'000};
    select(nfds, &readers, &writers, nullptr, &tv);  // NOLINT: c-ares's own interface
    ares_process(channel, &readers, &writers);
  }
  ares_destroy(channel);  // a pending query's callback runs with ARES_EDESTRUCTION
  if (!answer.done || answer.status == ARES_EDESTRUCTION) {
    out.error = absl::StrCat("no answer for ", name, " within ", timeout_ms, " ms");
    return out;
  }
  if (answer.status == ARES_ENOTFOUND || answer.status == ARES_ENODATA) {
    out.ok = true;  // the name has no addresses now
    return out;
  }
  if (answer.status != ARES_SUCCESS) {
    out.error = absl::StrCat(name, ": ", ares_strerror(answer.status));
    return out;
  }
  out.ok = true;
  out.addresses.assign(answer.addresses.begin(), answer.addresses.end());
  return out;
}

}  // namespace

DiscoveryOutcome ResolveA(const std::string& name, const std::string& server, uint32_t timeout_ms) {
  return Query(name, server, timeout_ms, ns_t_a, OnAnswer);
}

DiscoveryOutcome ResolveSrv(const std::string& name, const std::string& server,
                            uint32_t timeout_ms) {
  return Query(name, server, timeout_ms, ns_t_srv, OnSrvAnswer);
}

DiscoveredHosts Discover(const config::DiscoveryConfig& d, uint32_t timeout_ms) {
  DiscoveredHosts out;
  const bool srv = d.mode == "srv";
  DiscoveryOutcome first = (srv ? ResolveSrv : ResolveA)(d.name, d.server, timeout_ms);
  if (!first.ok) {
    out.error = first.error;
    return out;
  }
  for (const std::string& item : first.addresses) {
    if (!srv) {
      out.hosts.push_back({DiscoveredPodName(d.pod_prefix, item), item});
      continue;
    }
    DiscoveryOutcome a = ResolveA(item, d.server, timeout_ms);
    if (!a.ok) {
      out.error = absl::StrCat("SRV target ", item, ": ", a.error);
      return out;
    }
    if (!a.addresses.empty())
      out.hosts.push_back({d.pod_prefix + item.substr(0, item.find('.')), a.addresses[0]});
  }
  out.ok = true;
  return out;
}

Discoverer::Discoverer(const config::DiscoveryConfig& config)
    : config_(config), thread_([this] { Loop(); }) {}

Discoverer::~Discoverer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Discoverer::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    DiscoveredHosts o = Discover(config_, std::min<uint32_t>(config_.interval_ms, 2000));
    lock.lock();
    outcomes_.push_back(std::move(o));
    while (outcomes_.size() > 16) outcomes_.pop_front();
    cv_.wait_for(lock, std::chrono::milliseconds(config_.interval_ms), [this] { return stop_; });
  }
}

std::vector<DiscoveredHosts> Discoverer::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DiscoveredHosts> out(std::make_move_iterator(outcomes_.begin()),
                                   std::make_move_iterator(outcomes_.end()));
  outcomes_.clear();
  return out;
}

}  // namespace kvidx::ingest
