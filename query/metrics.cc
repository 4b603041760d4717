#include "query/metrics.h"

#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <chrono>
#include <map>

namespace kvidx::query {

struct Metrics::Impl {
  std::unique_ptr<prometheus::Exposer> exposer;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::atomic<bool> stop{false};
  std::thread refresher;
  const KvIndexService* service = nullptr;
  std::map<std::string, prometheus::Gauge*> gauges;

  prometheus::Gauge& G(const std::string& name, const std::string& help,
                       const std::map<std::string, std::string>& labels = {}) {
    std::string key = name;
    for (auto& [k, v] : labels) key.append("|").append(k).append("=").append(v);
    auto it = gauges.find(key);
    if (it != gauges.end()) return *it->second;
    auto& family = prometheus::BuildGauge().Name(name).Help(help).Register(*registry);
    prometheus::Gauge* g = &family.Add(labels);
    gauges[key] = g;
    return *g;
  }

  void Refresh() {
    v1::StatsResponse s;
    service->FillStats(&s);
    G("kvidx_publishers", "Registered publishers").Set(s.publishers());
    G("kvidx_blocks", "Blocks in the index").Set(static_cast<double>(s.blocks()));
    G("kvidx_pairs", "(publisher, block) residencies").Set(static_cast<double>(s.pairs()));
    G("kvidx_pair_capacity", "Residency capacity").Set(static_cast<double>(s.pair_capacity()));
    G("kvidx_occupancy_ratio", "pairs / pair capacity").Set(s.occupancy());
    G("kvidx_segment_bytes", "Bytes of the index segment")
        .Set(static_cast<double>(s.segment_bytes()));
    G("kvidx_bytes_per_pair", "Segment bytes per live pair").Set(s.bytes_per_pair());
    G("kvidx_batches_applied_total", "Event batches applied")
        .Set(static_cast<double>(s.batches_applied()));
    G("kvidx_events_applied_total", "Events applied").Set(static_cast<double>(s.events_applied()));
    for (auto& [reason, n] : s.events_rejected()) {
      G("kvidx_events_rejected_total", "Batches or events rejected, by reason",
        {{"reason", reason}})
          .Set(static_cast<double>(n));
    }
    G("kvidx_garbage_frames_total", "Messages that were not batches")
        .Set(static_cast<double>(s.garbage_frames()));
    G("kvidx_evictions_total", "Blocks evicted for capacity")
        .Set(static_cast<double>(s.evictions()));
    G("kvidx_replays_total", "Replay requests").Set(static_cast<double>(s.replays()));
    G("kvidx_gaps_total", "Sequence gaps seen").Set(static_cast<double>(s.gaps()));
    G("kvidx_resyncs_total", "Publisher resyncs").Set(static_cast<double>(s.resyncs()));
    G("kvidx_stripe_repairs_total", "Stripes repaired after a writer died")
        .Set(static_cast<double>(s.stripe_repairs()));
    const ServiceCounters& c = service->counters();
    G("kvidx_lookups_total", "Lookup queries answered").Set(static_cast<double>(c.lookups.load()));
    G("kvidx_lookup_hits_total", "Lookups that matched a block")
        .Set(static_cast<double>(c.lookup_hits.load()));
    G("kvidx_lookup_rpcs_total", "Lookup calls").Set(static_cast<double>(c.lookup_rpcs.load()));
    G("kvidx_invalid_arguments_total", "Calls refused as invalid")
        .Set(static_cast<double>(c.invalid_arguments.load()));
    G("kvidx_overloaded_total", "Calls refused for load")
        .Set(static_cast<double>(c.overloaded.load()));
    G("kvidx_degraded_lookups_total", "Lookups read best-effort")
        .Set(static_cast<double>(c.degraded.load()));
    G("kvidx_healthy", "1 if every worker that owns publishers is alive").Set(s.healthy() ? 1 : 0);
    for (const auto& w : s.workers()) {
      std::map<std::string, std::string> l = {{"worker", std::to_string(w.worker())}};
      G("kvidx_worker_lag_ms", "Oldest last-event age among a worker's connected publishers", l)
          .Set(static_cast<double>(w.max_last_event_age_ms()));
      G("kvidx_worker_open_gaps", "Publishers of a worker replaying a gap", l).Set(w.open_gaps());
    }
  }
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen,
                                                        const KvIndexService* service) {
  std::unique_ptr<Metrics> m(new Metrics());
  m->impl_ = std::make_unique<Impl>();
  m->impl_->service = service;
  try {
    m->impl_->exposer = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(std::string("metrics on ") + listen + ": " + e.what());
  }
  m->impl_->exposer->RegisterCollectable(m->impl_->registry);
  m->impl_->Refresh();
  Impl* impl = m->impl_.get();
  impl->refresher = std::thread([impl] {
    while (!impl->stop.load()) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      impl->Refresh();
    }
  });
  return m;
}

Metrics::~Metrics() {
  impl_->stop = true;
  if (impl_->refresher.joinable()) impl_->refresher.join();
}

}  // namespace kvidx::query
