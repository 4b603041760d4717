#include "query/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <limits>
#include <string>
#include <vector>

namespace kvidx::query {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Builds every family from the index and the service counters at scrape time: monotonic
// totals are counters, levels are gauges, latencies are histograms.
class Snapshot final : public prometheus::Collectable {
 public:
  explicit Snapshot(const KvIndexService* service) : service_(service) {}

  std::vector<MetricFamily> Collect() const override {
    std::vector<MetricFamily> out;
    v1::StatsResponse s;
    service_->FillStats(&s);
    auto add = [&](const std::string& name, const std::string& help, MetricType type, double v,
                   std::vector<ClientMetric::Label> labels = {}) {
      MetricFamily* f = nullptr;
      for (auto& existing : out) {
        if (existing.name == name) f = &existing;
      }
      if (f == nullptr) {
        out.push_back({name, help, type, {}});
        f = &out.back();
      }
      ClientMetric m;
      m.label = std::move(labels);
      if (type == MetricType::Counter)
        m.counter.value = v;
      else
        m.gauge.value = v;
      f->metric.push_back(std::move(m));
    };
    auto gauge = [&](const std::string& name, const std::string& help, double v,
                     std::vector<ClientMetric::Label> labels = {}) {
      add(name, help, MetricType::Gauge, v, std::move(labels));
    };
    auto counter = [&](const std::string& name, const std::string& help, double v,
                       std::vector<ClientMetric::Label> labels = {}) {
      add(name, help, MetricType::Counter, v, std::move(labels));
    };
    auto histogram = [&](const std::string& name, const std::string& help,
                         const uint64_t(&buckets)[index::kLatencyBounds + 1], uint64_t sum_ns) {
      ClientMetric m;
      uint64_t cumulative = 0;
      for (int i = 0; i < index::kLatencyBounds; ++i) {
        cumulative += buckets[i];
        m.histogram.bucket.push_back(
            {cumulative, static_cast<double>(index::kLatencyBoundsUs[i]) / 1e6});
      }
      cumulative += buckets[index::kLatencyBounds];
      m.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
      m.histogram.sample_count = cumulative;
      m.histogram.sample_sum = static_cast<double>(sum_ns) / 1e9;
      out.push_back({name, help, MetricType::Histogram, {std::move(m)}});
    };
    gauge("kvidx_publishers", "Registered publishers", s.publishers());
    gauge("kvidx_blocks", "Blocks in the index", static_cast<double>(s.blocks()));
    gauge("kvidx_pairs", "(publisher, block) residencies", static_cast<double>(s.pairs()));
    gauge("kvidx_pair_capacity", "Residency capacity", static_cast<double>(s.pair_capacity()));
    gauge("kvidx_occupancy_ratio", "pairs / pair capacity", s.occupancy());
    gauge("kvidx_segment_bytes", "Bytes of the index segment",
          static_cast<double>(s.segment_bytes()));
    gauge("kvidx_segment_huge_page_bytes",
          "Bytes of the index segment this process maps with 2 MiB pages",
          static_cast<double>(s.segment_huge_page_bytes()));
    gauge("kvidx_bytes_per_pair", "Segment bytes per live pair", s.bytes_per_pair());
    counter("kvidx_batches_applied_total", "Event batches applied",
            static_cast<double>(s.batches_applied()));
    counter("kvidx_events_applied_total", "Events applied",
            static_cast<double>(s.events_applied()));
    for (auto& [reason, n] : s.events_rejected()) {
      counter("kvidx_events_rejected_total", "Batches or events rejected, by reason",
              static_cast<double>(n), {{"reason", reason}});
    }
    counter("kvidx_garbage_frames_total", "Messages that were not batches",
            static_cast<double>(s.garbage_frames()));
    counter("kvidx_evictions_total", "Blocks evicted for capacity",
            static_cast<double>(s.evictions()));
    counter("kvidx_replays_total", "Replay requests", static_cast<double>(s.replays()));
    counter("kvidx_gaps_total", "Sequence gaps seen", static_cast<double>(s.gaps()));
    counter("kvidx_resyncs_total", "Publisher resyncs", static_cast<double>(s.resyncs()));
    counter("kvidx_announcements_total", "Announce calls that predicted blocks",
            static_cast<double>(s.announcements()));
    counter("kvidx_announced_blocks_total", "Blocks predicted by announcements",
            static_cast<double>(s.announced_blocks()));
    counter("kvidx_confirmed_blocks_total", "Predicted blocks the announced pod then stored",
            static_cast<double>(s.confirmed_blocks()));
    counter("kvidx_predictions_expired_total", "Announcements that expired unconfirmed",
            static_cast<double>(s.predictions_expired()));
    gauge("kvidx_prediction_precision_ratio", "Confirmed / announced blocks (settled)",
          s.prediction_precision());
    gauge("kvidx_predicted_blocks", "Predicted blocks live",
          static_cast<double>(s.predicted_blocks_live()));
    counter("kvidx_engine_hash_checks_total", "Published block hashes recomputed from tokens",
            static_cast<double>(s.hash_checks()));
    counter("kvidx_engine_hash_mismatches_total",
            "Recomputed block hashes that differ from the engine's (block size, seed, LoRA, salt?)",
            static_cast<double>(s.hash_mismatches()));
    gauge("kvidx_kvbm_instances", "NVIDIA KVBM instances live over all endpoints",
          static_cast<double>(s.kvbm_instances()));
    counter("kvidx_kvbm_refused_total",
            "KVBM batches refused: their instance was one past max_kvbm_instances",
            static_cast<double>(s.kvbm_refused()));
    counter("kvidx_stripe_repairs_total", "Stripes repaired after a writer died",
            static_cast<double>(s.stripe_repairs()));
    gauge("kvidx_engine_entries", "Engine hash -> block key entries",
          static_cast<double>(s.engine_entries()));
    gauge("kvidx_engine_capacity", "Engine hash table capacity",
          static_cast<double>(s.engine_capacity()));
    counter("kvidx_engine_table_full_total", "Stores refused: no room to map their engine hash",
            static_cast<double>(s.engine_table_full()));
    const ServiceCounters& c = service_->counters();
    counter("kvidx_lookups_total", "Lookup queries answered",
            static_cast<double>(c.lookups.load()));
    counter("kvidx_lookup_hits_total", "Lookups that matched a block",
            static_cast<double>(c.lookup_hits.load()));
    counter("kvidx_lookup_rpcs_total", "Lookup calls", static_cast<double>(c.lookup_rpcs.load()));
    counter("kvidx_invalid_arguments_total", "Calls refused as invalid",
            static_cast<double>(c.invalid_arguments.load()));
    counter("kvidx_overloaded_total", "Calls refused for load",
            static_cast<double>(c.overloaded.load()));
    counter("kvidx_degraded_lookups_total", "Lookups read best-effort",
            static_cast<double>(c.degraded.load()));
    counter("kvidx_permission_denied_total",
            "Admin calls refused: on the router listener, or from a client not allowed",
            static_cast<double>(c.permission_denied.load()));
    gauge("kvidx_healthy", "1 if every worker that owns publishers is alive", s.healthy() ? 1 : 0);
    for (const auto& w : s.workers()) {
      std::vector<ClientMetric::Label> l = {{"worker", std::to_string(w.worker())}};
      gauge("kvidx_worker_lag_ms", "Oldest last-event age among a worker's connected publishers",
            static_cast<double>(w.max_last_event_age_ms()), l);
      gauge("kvidx_worker_open_gaps", "Publishers of a worker replaying a gap", w.open_gaps(), l);
      gauge("kvidx_worker_budget_used_bytes",
            "Bytes a worker's replay buffers and sequence tables hold",
            static_cast<double>(w.budget_used_bytes()), l);
      gauge("kvidx_worker_budget_bytes", "Sum of a worker's per-publisher memory budgets",
            static_cast<double>(w.budget_bytes()), l);
      counter("kvidx_worker_budget_drops_total", "Items a worker refused because a budget was full",
              static_cast<double>(w.budget_drops()), l);
      gauge("kvidx_worker_rss_bytes", "Resident set of a worker process",
            static_cast<double>(w.rss_bytes()), l);
    }
    uint64_t lookup_buckets[index::kLatencyBounds + 1];
    for (int i = 0; i <= index::kLatencyBounds; ++i)
      lookup_buckets[i] = c.lookup_latency_buckets[i].load(std::memory_order_relaxed);
    histogram("kvidx_lookup_seconds", "Lookup call latency in the server", lookup_buckets,
              c.lookup_latency_sum_ns.load(std::memory_order_relaxed));
    const index::SegmentHeader* h = service_->index().header();
    uint64_t apply_buckets[index::kLatencyBounds + 1];
    for (int i = 0; i <= index::kLatencyBounds; ++i)
      apply_buckets[i] = index::Ld(h->ingest.apply_latency_buckets[i]);
    histogram("kvidx_apply_batch_seconds", "Time to decode and apply one event batch",
              apply_buckets, index::Ld(h->ingest.apply_latency_sum_ns));
    return out;
  }

 private:
  const KvIndexService* service_;
};

}  // namespace

struct Metrics::Impl {
  std::unique_ptr<prometheus::Exposer> exposer;
  std::shared_ptr<Snapshot> snapshot;
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen,
                                                        const KvIndexService* service) {
  std::unique_ptr<Metrics> m(new Metrics());
  m->impl_ = std::make_unique<Impl>();
  m->impl_->snapshot = std::make_shared<Snapshot>(service);
  try {
    m->impl_->exposer = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(std::string("metrics on ") + listen + ": " + e.what());
  }
  m->impl_->exposer->RegisterCollectable(m->impl_->snapshot);
  return m;
}

int Metrics::port() const {
  auto ports = impl_->exposer->GetListeningPorts();
  return ports.empty() ? 0 : ports[0];
}

Metrics::~Metrics() = default;

}  // namespace kvidx::query
