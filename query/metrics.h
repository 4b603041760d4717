// Prometheus metrics for kvidx-query: ingest and query counters, occupancy, refreshed from
// the index and the service counters once a second.
#ifndef KVIDX_QUERY_METRICS_H
#define KVIDX_QUERY_METRICS_H

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

#include "query/service.h"

namespace kvidx::query {

class Metrics {
 public:
  // Serves /metrics on `listen` ("host:port"); FAILED_PRECONDITION if it cannot bind.
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& listen,
                                                        const KvIndexService* service);
  ~Metrics();

 private:
  Metrics() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvidx::query

#endif  // KVIDX_QUERY_METRICS_H
