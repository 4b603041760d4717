// An ingest worker: owns the publishers whose stable hash picks it, runs their links in one
// poll loop, and follows the publisher registry in the segment (config, admin RPCs).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <span>

#include <zmq.hpp>

#include "control/control_area.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "ingest/applier.h"
#include "ingest/config.h"
#include "ingest/discovery.h"
#include "ingest/publisher_link.h"

namespace kvidx::ingest {

class Worker {
 public:
  Worker(Config config, uint32_t worker_index);
  ~Worker();

  // Attaches (or creates) the segment, registers the configured models and publishers,
  // recovers publishers a dead predecessor left mid-operation, and opens this worker's links.
  absl::Status Init();
  // Re-reads publishers and models from `config` (SIGHUP).
  absl::Status Reload(Config config);
  // Runs until `stop` is set. `on_tick` (may be empty) is called about every poll timeout.
  void Run(const std::atomic<bool>& stop, const std::function<void()>& on_tick = {});

  index::PrefixIndex* index() { return index_.get(); }
  // Called during long commands (a clear of every namespace) so that a watchdog stays fed.
  void set_heartbeat(std::function<void()> f) { heartbeat_ = std::move(f); }
  size_t link_count() const { return links_.size(); }

 private:
  absl::Status RegisterFromConfig();
  // Admin commands (ingest/commands.cc): one executor per operation.
  void ServeCommands();
  void Execute(control::Command& c, std::span<char> payload);
  absl::Status ExecuteRegister(const control::CommandArgs& a, control::CommandResult& r);
  absl::Status ExecuteDropPod(bool unregister, const control::CommandArgs& a,
                              control::CommandResult& r);
  absl::Status ExecuteSequences(bool one, const control::CommandArgs& a, control::CommandResult& r,
                                std::span<char> payload);
  absl::Status ExecuteClearNamespaces(bool all, const control::CommandArgs& a,
                                      control::CommandResult& r);
  void SyncLinks();
  // [[discovery]]: applies the resolutions that arrived to the publishers this worker owns.
  void ApplyDiscovery();
  void RegisterDiscovered(const config::DiscoveryConfig& d, const DiscoveredHost& h);
  void DropDiscovered(const config::DiscoveryConfig& d, const std::string& pod);
  // Unregisters publisher (pod, dp_rank) of this worker and the publishers of its further KVBM
  // instances ("<pod>#<n>"); returns the first's outcome.
  absl::Status DropPublisher(const std::string& pod, uint32_t dp_rank, index::PublisherId id);
  void DropInstancePods(const std::string& pod, uint32_t dp_rank);
  LinkOptions MakeLinkOptions() const;

  Config config_;
  uint32_t worker_;
  std::unique_ptr<index::Segment> segment_;
  std::unique_ptr<index::PrefixIndex> index_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<control::ControlArea> control_;
  zmq::context_t ctx_;
  std::map<index::PublisherId, std::unique_ptr<PublisherLink>> links_;
  uint64_t registry_version_ = ~uint64_t{0};
  std::function<void()> heartbeat_;
  struct Discovery {
    explicit Discovery(const config::DiscoveryConfig& d)
        : resolver(std::make_unique<Discoverer>(d)), state(d.drop_after_misses) {}
    std::unique_ptr<Discoverer> resolver;
    DiscoveryState state;
  };
  std::vector<Discovery> discovery_;
};

}  // namespace kvidx::ingest
