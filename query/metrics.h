// Prometheus metrics for kvidx-query, read from the index and the service counters at each
// scrape: totals as counters, levels as gauges, apply and lookup latencies as histograms.
#pragma once

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
  int port() const;  // the port it listens on (as bound: "host:0" takes a free one)

 private:
  Metrics() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvidx::query
