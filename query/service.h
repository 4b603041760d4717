// The kvidx.v1.KvIndex gRPC service: answers from the read-only mapping of the index, copying
// nothing but the answer; hands admin calls to the ingest workers through the control area.
//
// Thread-safe: gRPC calls handlers concurrently; everything shared is read-only or atomic.
// Errors: INVALID_ARGUMENT with a reason for bad input (too many tokens, too many queries, no
// input), RESOURCE_EXHAUSTED past max_inflight_rpcs, NOT_FOUND for unknown pods in GetPod and
// admin calls, UNAVAILABLE when no ingest worker takes an admin command.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.h"
#include "control/control_area.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "query/errors.h"
#include "query/predictions.h"
#include "query/tokenizer.h"

namespace kvidx::query {

struct ServiceCounters {
  std::atomic<uint64_t> lookups{0};
  std::atomic<uint64_t> lookup_hits{0};
  std::atomic<uint64_t> lookup_rpcs{0};
  std::atomic<uint64_t> invalid_arguments{0};
  std::atomic<uint64_t> overloaded{0};
  std::atomic<uint64_t> degraded{0};
  std::atomic<uint64_t> permission_denied{0};  // admin calls refused by a listener's surface
  // Lookup RPC latency (kLatencyBoundsUs buckets, the last one +Inf) and its sum.
  std::atomic<uint64_t> lookup_latency_buckets[index::kLatencyBounds + 1] = {};
  std::atomic<uint64_t> lookup_latency_sum_ns{0};
};

// Bounds concurrent RPCs: past the limit a call is refused with RESOURCE_EXHAUSTED.
class InflightGuard {
 public:
  InflightGuard(std::atomic<int>& n, int limit) : n_(n), ok_(n.fetch_add(1) < limit) {}
  ~InflightGuard() { n_.fetch_sub(1); }
  InflightGuard(const InflightGuard&) = delete;
  InflightGuard& operator=(const InflightGuard&) = delete;
  bool ok() const { return ok_; }

 private:
  std::atomic<int>& n_;
  bool ok_;
};

// The pods of one columnar Lookup call (LookupRequest.columnar): entry_of[publisher] is its
// index in resp->pods, -1 until a result names it.
struct CallPods {
  v1::LookupResponse* resp;
  std::vector<int32_t> entry_of;
};

class KvIndexService final : public kvidx::v1::KvIndex::Service {
 public:
  KvIndexService(const config::Config& config, std::unique_ptr<index::Segment> segment,
                 std::unique_ptr<control::ControlArea> control);

  grpc::Status Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                      v1::LookupResponse* resp) override;
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                     v1::StatsResponse* resp) override;
  grpc::Status ListPods(grpc::ServerContext* ctx, const v1::ListPodsRequest* req,
                        v1::ListPodsResponse* resp) override;
  grpc::Status GetPod(grpc::ServerContext* ctx, const v1::GetPodRequest* req,
                      v1::Pod* resp) override;
  grpc::Status RegisterPublisher(grpc::ServerContext* ctx, const v1::RegisterPublisherRequest* req,
                                 v1::Pod* resp) override;
  grpc::Status UnregisterPublisher(grpc::ServerContext* ctx,
                                   const v1::UnregisterPublisherRequest* req,
                                   v1::UnregisterPublisherResponse* resp) override;
  grpc::Status Clear(grpc::ServerContext* ctx, const v1::ClearRequest* req,
                     v1::ClearResponse* resp) override;
  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchEventsRequest* req,
                           grpc::ServerWriter<v1::WatchEvent>* writer) override;
  grpc::Status ListSequences(grpc::ServerContext* ctx, const v1::ListSequencesRequest* req,
                             v1::ListSequencesResponse* resp) override;
  grpc::Status GetSequence(grpc::ServerContext* ctx, const v1::GetSequenceRequest* req,
                           v1::Sequence* resp) override;
  grpc::Status Ping(grpc::ServerContext* ctx, const v1::PingRequest* req,
                    v1::PingResponse* resp) override;
  grpc::Status Announce(grpc::ServerContext* ctx, const v1::AnnounceRequest* req,
                        v1::AnnounceResponse* resp) override;

  const index::PrefixIndex& index() const { return *index_; }
  const ServiceCounters& counters() const { return counters_; }
  void CountPermissionDenied() { counters_.permission_denied.fetch_add(1); }
  void FillStats(v1::StatsResponse* resp) const;
  const config::Config& config() const { return config_; }
  // The WatchEvents loop for any transport (gRPC, the HTTP listener's WebSockets): calls
  // `write` with each event until it returns false or `cancelled` returns true. Counts against
  // max_watch_streams (RESOURCE_EXHAUSTED, TOO_MANY_WATCHERS past it).
  grpc::Status Watch(const v1::WatchEventsRequest& req, const std::function<bool()>& cancelled,
                     const std::function<bool(const v1::WatchEvent&)>& write);

 private:
  grpc::Status Overloaded();
  // One query's answer; `pods` (columnar calls only) numbers the call's pods.
  grpc::Status LookupOne(const v1::LookupQuery& q, v1::LookupResult* out, CallPods* pods);
  // The matches of an index answer, as PodMatches or columns, with the best pod
  // (query/answer.cc).
  void WriteMatches(const index::LookupResult& r, v1::LookupResult* out, CallPods* pods) const;
  // The call's entry for a publisher in LookupResponse.pods, added on first use.
  uint32_t PodEntry(CallPods& pods, index::PublisherId id, const index::PublisherSlot& s,
                    int64_t now_ns) const;
  // The block keys of a query (and its namespace facts in `out`; none if it is unknown).
  grpc::Status QueryKeys(const v1::LookupQuery& q, std::vector<index::BlockKey>* keys,
                         std::vector<uint32_t>* depths, v1::LookupResult* out);
  // A kvbm_hashes query's keys and their depths (query/query_keys.cc).
  grpc::Status KvbmKeys(const v1::LookupQuery& q, index::NamespaceId ns, uint32_t bs,
                        std::vector<index::BlockKey>* keys, std::vector<uint32_t>* depths,
                        v1::LookupResult* out);
  // Predicted blocks of the answer's pods, and pods announced the prompt (query/announce.cc).
  void AddPredicted(const std::vector<index::BlockKey>& keys, const index::LookupResult& r,
                    v1::LookupResult* out, CallPods* pods) const;
  // The block keys of `tokens` with the query's block_extra and cache_salt mixed in
  // (query/query_keys.cc).
  grpc::Status KeysWithExtra(const v1::LookupQuery& q, index::BlockKey root,
                             std::span<const uint32_t> tokens, uint32_t bs,
                             std::vector<index::BlockKey>* keys);
  // Prompt text or chat messages of `q` -> token ids, through the model's tokenizer.
  grpc::Status Tokenize(const v1::LookupQuery& q, std::vector<uint32_t>* tokens,
                        v1::LookupResult* out);
  void FillPod(index::PublisherId id, v1::Pod* pod) const;
  void FillFreshness(const index::PublisherSlot& s, v1::Freshness* f, int64_t now_ns = 0) const;
  // Admin calls (query/admin.cc) run as commands of the owning worker (control/layout.h).
  grpc::Status CommandForPod(const std::string& pod, uint32_t dp_rank, control::CommandOp op,
                             control::Command* c) const;
  grpc::Status RunCommand(const control::Command& c, control::Answer* answer);
  grpc::Status ClearPod(const v1::PodRef& pod, v1::ClearResponse* resp);
  void FillApplied(const control::RingEntry& e, v1::AppliedEvent* a) const;

  config::Config config_;
  std::unique_ptr<index::Segment> segment_;
  std::unique_ptr<index::PrefixIndex> index_;
  std::unique_ptr<control::ControlArea> control_;
  ServiceCounters counters_;
  std::atomic<int> inflight_{0};
  std::atomic<int> watch_streams_{0};
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Predictions> predictions_;  // last: its thread reads index_ and control_
};

}  // namespace kvidx::query
