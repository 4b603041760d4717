#include "query/service.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"

#include "shared/clock.h"
#include "wire/lineage_hash.h"
#include "wire/vocabulary.h"

namespace kvidx::query {

using index::Ld;

namespace {

std::string Str(const char* s, size_t cap) { return std::string(s, strnlen(s, cap)); }

// The resident set of process `pid` (the second field of /proc/PID/statm, in pages); 0 if
// it cannot be read (another user's process under hidepid, or gone).
uint64_t ResidentBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/statm");
  uint64_t size = 0, resident = 0;
  if (!(in >> size >> resident)) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

KvIndexService::KvIndexService(const config::Config& config,
                               std::unique_ptr<index::Segment> segment,
                               std::unique_ptr<control::ControlArea> control)
    : config_(config),
      segment_(std::move(segment)),
      index_(std::make_unique<index::PrefixIndex>(segment_.get())),
      control_(std::move(control)) {
  TokenizerOptions t;
  t.timeout_ms = config_.tokenizer_timeout_ms;
  t.cache_entries = config_.tokenizer_cache_entries;
  t.idle_connections = config_.tokenizer_connections;
  t.max_tokens = config_.max_tokens;
  tokenizer_ = std::make_unique<Tokenizer>(t);
  predictions_ = std::make_unique<Predictions>(
      index_.get(), control_.get(),
      PredictionOptions{config_.prediction_ttl_ms, config_.max_predicted_blocks});
}

grpc::Status KvIndexService::Tokenize(const v1::LookupQuery& q, std::vector<uint32_t>* tokens,
                                      v1::LookupResult* out) {
  const config::ModelConfig* model = nullptr;
  for (const auto& m : config_.models)
    if (m.name == q.namespace_().model()) model = &m;
  if (model == nullptr || model->tokenizer_endpoint.empty()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "NO_TOKENIZER",
                 absl::StrCat("model '", q.namespace_().model(),
                              "' has no tokenizer_endpoint: send token ids"));
  }
  uint64_t bytes = q.prompt().size();
  std::vector<ChatTurn> turns;
  for (const auto& m : q.messages().messages()) {
    turns.push_back({m.role(), m.content()});
    bytes += m.role().size() + m.content().size();
  }
  // Text of max_tokens tokens is rarely more than 32 bytes a token.
  if (bytes > uint64_t{config_.max_tokens} * 32) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "PROMPT_TOO_LONG",
                 absl::StrCat(bytes, " bytes of prompt text"));
  }
  auto r =
      tokenizer_->Tokenize(model->tokenizer_endpoint,
                           model->tokenizer_model.empty() ? model->name : model->tokenizer_model,
                           q.input_case() == v1::LookupQuery::kPrompt ? &q.prompt() : nullptr,
                           q.input_case() == v1::LookupQuery::kMessages ? &turns : nullptr);
  if (!r.ok()) {
    if (absl::IsResourceExhausted(r.status()))
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_TOKENS",
                   std::string(r.status().message()));
    const bool late = absl::IsDeadlineExceeded(r.status());
    return Error(late ? grpc::StatusCode::DEADLINE_EXCEEDED : grpc::StatusCode::UNAVAILABLE,
                 late ? "TOKENIZER_TIMEOUT" : "TOKENIZER_FAILED",
                 std::string(r.status().message()));
  }
  *tokens = std::move(r->tokens);
  out->set_input(r->cached ? "tokenizer_cache" : "tokenizer");
  out->set_prompt_tokens(static_cast<uint32_t>(tokens->size()));
  return grpc::Status::OK;
}

void KvIndexService::FillFreshness(const index::PublisherSlot& s, v1::Freshness* f,
                                   int64_t now_ns) const {
  int64_t last = Ld(s.ingest.last_event_wall_ns);
  if (now_ns == 0) now_ns = WallNanos();
  f->set_last_event_age_ms(last == 0 ? -1 : (now_ns - last) / 1'000'000);
  f->set_gap_open(Ld(s.ingest.gap_open) != 0);
  f->set_epoch(Ld(s.ingest.epoch));
  f->set_connected(Ld(s.ingest.connected) != 0);
  f->set_stream(
      wire::StreamStateName(static_cast<wire::StreamState>(Ld(s.ingest.stream_state) & 3)));
  f->set_reachable(Ld(s.ingest.reachable) != 0);
  int64_t heard = Ld(s.ingest.last_heard_wall_ns);
  f->set_last_heard_age_ms(heard == 0 ? -1 : (now_ns - heard) / 1'000'000);
}

grpc::Status KvIndexService::QueryKeys(const v1::LookupQuery& q,
                                       std::vector<index::BlockKey>* out_keys,
                                       std::vector<uint32_t>* depths, v1::LookupResult* out) {
  const auto& nsq = q.namespace_();
  if (nsq.model().empty()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "NO_MODEL", "namespace.model is empty");
  }
  std::string lora = nsq.lora_name();
  if (lora.empty() && nsq.lora_id() > 0) {
    static const std::map<int64_t, std::string> no_names;
    const std::map<int64_t, std::string>* names = &no_names;
    for (const auto& m : config_.models) {
      if (m.name == nsq.model()) names = &m.lora_names;
    }
    lora = config::AdapterName(*names, nsq.lora_id());
  }
  std::optional<index::NamespaceId> ns = index_->FindNamespace(nsq.model(), lora);
  out->set_namespace_known(ns.has_value());
  if (!ns) return grpc::Status::OK;  // an unknown namespace is an answer: nobody holds it
  const index::NamespaceSlot* nss = index_->namespace_slot(*ns);
  const uint32_t bs = nss->block_size;
  out->set_block_size(bs);
  std::vector<index::BlockKey>& keys = *out_keys;
  std::vector<uint32_t> tokenized;
  switch (q.input_case()) {
    case v1::LookupQuery::kPrompt:
    case v1::LookupQuery::kMessages: {
      if (grpc::Status st = Tokenize(q, &tokenized, out); !st.ok()) return st;
      if (grpc::Status st = KeysWithExtra(q, Ld(nss->root), tokenized, bs, &keys); !st.ok())
        return st;
      break;
    }
    case v1::LookupQuery::kTokens: {
      out->set_input("tokens");
      const auto& ids = q.tokens().ids();
      if (static_cast<uint32_t>(ids.size()) > config_.max_tokens) {
        return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_TOKENS",
                     absl::StrCat(ids.size(), " token ids; the limit is ", config_.max_tokens));
      }
      grpc::Status st =
          KeysWithExtra(q, Ld(nss->root), {ids.data(), static_cast<size_t>(ids.size())}, bs, &keys);
      if (!st.ok()) return st;
      break;
    }
    case v1::LookupQuery::kBlockKeys: {
      out->set_input("block_keys");
      const auto& k = q.block_keys().keys();
      if (uint64_t{static_cast<uint64_t>(k.size())} * std::max(1u, bs) > config_.max_tokens) {
        return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_BLOCKS",
                     absl::StrCat(k.size(), " block keys is more than max_tokens allows"));
      }
      keys.assign(k.begin(), k.end());
      break;
    }
    case v1::LookupQuery::kEngineHashes: {
      out->set_input("engine_hashes");
      const auto& h = q.engine_hashes().hashes();
      if (uint64_t{static_cast<uint64_t>(h.size())} * std::max(1u, bs) > config_.max_tokens) {
        return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_BLOCKS",
                     absl::StrCat(h.size(), " engine hashes is more than max_tokens allows"));
      }
      keys.reserve(h.size());
      for (uint64_t e : h) {
        auto k = index_->ResolveEngineHash(*ns, index::PrefixIndex::kAnyPublisher, e);
        if (!k) break;  // the chain is only known up to here
        keys.push_back(*k);
      }
      out->set_prompt_blocks(static_cast<uint32_t>(h.size()));
      break;
    }
    case v1::LookupQuery::kKvbmHashes:
      return KvbmKeys(q, *ns, bs, out_keys, depths, out);
    default:
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "NO_INPUT",
                   "a query needs tokens, block_keys, engine_hashes, kvbm_hashes, prompt or "
                   "messages");
  }
  if (q.input_case() != v1::LookupQuery::kEngineHashes) {
    out->set_prompt_blocks(static_cast<uint32_t>(keys.size()));
  }
  return grpc::Status::OK;
}

grpc::Status KvIndexService::LookupOne(const v1::LookupQuery& q, v1::LookupResult* out,
                                       CallPods* pods) {
  std::vector<index::BlockKey> keys;
  std::vector<uint32_t> depths;  // KVBM: each key's depth (position + 1)
  if (grpc::Status st = QueryKeys(q, &keys, &depths, out); !st.ok() || !out->namespace_known())
    return st;
  // Candidates: no more than the segment has publishers, matched through one map of the
  // active ones (a query naming a million candidates is refused, not looped over).
  if (static_cast<uint64_t>(q.candidates_size()) > index_->geometry().publishers) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_CANDIDATES",
                 absl::StrCat(q.candidates_size(), " candidates; the index holds at most ",
                              index_->geometry().publishers, " publishers"));
  }
  std::vector<index::PublisherId> candidates;
  if (q.candidates_size() > 0) {
    std::multimap<std::string_view, std::pair<uint32_t, index::PublisherId>> by_pod;
    for (index::PublisherId id : index_->ActivePublishers()) {
      const index::PublisherSlot* s = index_->publisher_slot(id);
      if (s != nullptr) by_pod.emplace(control::FieldView(s->id.pod), std::pair{s->id.dp_rank, id});
    }
    for (const auto& c : q.candidates()) {
      auto [from, to] = by_pod.equal_range(c.pod());
      for (auto it = from; it != to; ++it) {
        if (c.dp_rank() < 0 || uint32_t(c.dp_rank()) == it->second.first)
          candidates.push_back(it->second.second);
      }
    }
  }
  if (q.candidates_size() > 0 && candidates.empty()) return grpc::Status::OK;  // none known
  index::LookupOptions opts;
  opts.candidates = candidates;
  opts.max_blocks = q.max_blocks();
  // One result per server thread, reused: the walk allocates nothing once it has grown.
  thread_local index::LookupResult r;
  if (q.input_case() == v1::LookupQuery::kKvbmHashes) {
    index_->LookupDeepest(keys, depths, opts, r);
  } else {
    index_->LookupInto(keys, opts, r);
  }
  out->set_degraded(r.degraded);
  if (r.degraded) counters_.degraded.fetch_add(1, std::memory_order_relaxed);
  WriteMatches(r, out, pods);
  if (q.include_predictions()) AddPredicted(keys, r, out, pods);
  counters_.lookups.fetch_add(1, std::memory_order_relaxed);
  if (!r.matches.empty()) counters_.lookup_hits.fetch_add(1, std::memory_order_relaxed);
  return grpc::Status::OK;
}

grpc::Status KvIndexService::Overloaded() {
  counters_.overloaded.fetch_add(1);
  return Error(grpc::StatusCode::RESOURCE_EXHAUSTED, "OVERLOADED", "too many calls in flight");
}

grpc::Status KvIndexService::Lookup(grpc::ServerContext*, const v1::LookupRequest* req,
                                    v1::LookupResponse* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  counters_.lookup_rpcs.fetch_add(1, std::memory_order_relaxed);
  const int64_t t0 = MonotonicNanos();
  struct Timer {
    ServiceCounters& c;
    int64_t t0;
    ~Timer() {
      int64_t took = MonotonicNanos() - t0;
      c.lookup_latency_buckets[index::LatencyBucket(took)].fetch_add(1, std::memory_order_relaxed);
      c.lookup_latency_sum_ns.fetch_add(static_cast<uint64_t>(took), std::memory_order_relaxed);
    }
  } timer{counters_, t0};
  if (static_cast<uint32_t>(req->queries_size()) > config_.max_lookups_per_call) {
    counters_.invalid_arguments.fetch_add(1);
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_QUERIES",
                 absl::StrCat(req->queries_size(), " queries in one call; the limit is ",
                              config_.max_lookups_per_call));
  }
  uint64_t total_tokens = 0;
  for (const auto& q : req->queries()) total_tokens += q.tokens().ids_size();
  if (total_tokens > uint64_t{config_.max_tokens} * 64) {
    counters_.invalid_arguments.fetch_add(1);
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "TOO_MANY_TOKENS",
                 absl::StrCat(total_tokens, " token ids in one call"));
  }
  CallPods pods{resp, {}};
  if (req->columnar()) pods.entry_of.assign(index_->geometry().publishers, -1);
  for (const auto& q : req->queries()) {
    v1::LookupResult* result = resp->add_results();
    if (req->columnar()) result->set_best_column(-1);  // until a match says otherwise
    grpc::Status st = LookupOne(q, result, req->columnar() ? &pods : nullptr);
    if (!st.ok()) {
      counters_.invalid_arguments.fetch_add(1);
      resp->Clear();
      return st;
    }
  }
  return grpc::Status::OK;
}

void KvIndexService::FillStats(v1::StatsResponse* resp) const {
  index::IndexStats s = index_->Stats();
  const index::SegmentHeader* h = index_->header();
  resp->set_enabled(true);
  resp->set_publishers(s.publishers);
  resp->set_namespaces(s.namespaces);
  resp->set_blocks(s.blocks);
  resp->set_pairs(s.pairs);
  uint64_t tokens = 0;
  resp->set_block_capacity(s.block_capacity);
  resp->set_pair_capacity(s.pair_capacity);
  resp->set_occupancy(
      s.pair_capacity ? static_cast<double>(s.pairs) / static_cast<double>(s.pair_capacity) : 0);
  resp->set_segment_bytes(s.segment_bytes);
  const index::Segment::PageReport pages = segment_->Pages();
  resp->set_segment_resident_bytes(pages.resident_bytes);
  resp->set_segment_huge_page_bytes(pages.huge_page_bytes);
  resp->set_segment_page_policy(pages.policy);
  resp->set_tokenizer_calls(tokenizer_->calls());
  resp->set_tokenizer_cache_hits(tokenizer_->cache_hits());
  resp->set_tokenizer_failures(tokenizer_->failures());
  std::array<uint64_t, kAibrixCodes> codes = ErrorCodeCounts();
  for (index::PublisherId id : index_->ActivePublishers()) {
    if (const index::PublisherSlot* ps = index_->publisher_slot(id)) {
      const auto mine = PublisherErrorCodes(*ps);
      for (int i = 0; i < kAibrixCodes; ++i) codes[i] += mine[i];
    }
  }
  for (int i = 0; i < kAibrixCodes; ++i)
    if (codes[i] != 0) (*resp->mutable_error_codes())[kFirstAibrixCode + i] = codes[i];
  resp->set_bytes_per_pair(s.bytes_per_live_pair);
  resp->set_batches_applied(Ld(h->ingest.batches_applied));
  resp->set_events_applied(Ld(h->ingest.events_applied));
  auto& rejected = *resp->mutable_events_rejected();
  static_assert(static_cast<int>(wire::DecodeReason::kNumReasons) <= index::kDecodeReasonSlots);
  for (int r = 1; r < static_cast<int>(wire::DecodeReason::kNumReasons); ++r) {
    rejected[wire::DecodeReasonName(static_cast<wire::DecodeReason>(r))] =
        Ld(h->ingest.decode_errors[r]);
  }
  rejected["unknown_event"] = Ld(h->ingest.unknown_events);
  resp->set_garbage_frames(Ld(h->ingest.garbage_frames));
  uint64_t lookups = counters_.lookups.load();
  resp->set_lookups(lookups);
  resp->set_hit_rate(lookups ? static_cast<double>(counters_.lookup_hits.load()) /
                                   static_cast<double>(lookups)
                             : 0);
  resp->set_evictions(s.evicted_blocks);
  resp->set_stripe_repairs(s.stripe_repairs);
  resp->set_engine_entries(s.engine_entries);
  resp->set_engine_capacity(s.engine_capacity);
  resp->set_engine_table_full(s.engine_full);
  uint64_t replays = 0, gaps = 0, resyncs = 0, hash_checks = 0, hash_mismatches = 0;
  uint64_t kvbm_instances = 0, kvbm_refused = 0;
  std::map<uint32_t, v1::WorkerLag> lag;
  bool healthy = true;
  for (auto id : index_->ActivePublishers()) {
    const index::PublisherSlot* p = index_->publisher_slot(id);
    if (p == nullptr) continue;
    replays += Ld(p->ingest.replays);
    gaps += Ld(p->ingest.gaps);
    resyncs += Ld(p->ingest.resyncs);
    hash_checks += Ld(p->ingest.hash_checks);
    hash_mismatches += Ld(p->ingest.hash_mismatches);
    kvbm_instances += Ld(p->ingest.kvbm_instances);
    kvbm_refused += Ld(p->ingest.kvbm_refused);
    const index::NamespaceSlot* nss =
        index_->namespace_slot(static_cast<index::NamespaceId>(p->id.ns));
    if (nss != nullptr) tokens += Ld(p->index.pairs) * nss->block_size;
    v1::WorkerLag& w = lag[p->id.worker];
    w.set_worker(p->id.worker);
    w.set_publishers(w.publishers() + 1);
    int64_t last = Ld(p->ingest.last_event_wall_ns);
    if (Ld(p->ingest.connected) && last != 0) {
      w.set_max_last_event_age_ms(
          std::max(w.max_last_event_age_ms(), (WallNanos() - last) / 1'000'000));
    }
    if (Ld(p->ingest.gap_open)) w.set_open_gaps(w.open_gaps() + 1);
    w.set_budget_used_bytes(w.budget_used_bytes() + Ld(p->ingest.buffered_bytes) +
                            Ld(p->ingest.sequence_bytes));
    w.set_budget_bytes(w.budget_bytes() + Ld(p->ingest.budget_bytes));
    w.set_budget_drops(w.budget_drops() + Ld(p->ingest.budget_drops));
  }
  // Healthy: every worker that owns publishers has a live process.
  for (auto& [w, l] : lag) {
    uint32_t pid = w < control::kMaxWorkers ? control_->header()->rings[w].pid : 0;
    if (pid == 0 || (kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM)) healthy = false;
    if (pid != 0) l.set_rss_bytes(ResidentBytes(static_cast<pid_t>(pid)));
    *resp->add_workers() = l;
  }
  resp->set_healthy(healthy);
  resp->set_tokens(tokens);
  resp->set_replays(replays);
  resp->set_gaps(gaps);
  resp->set_resyncs(resyncs);
  resp->set_hash_checks(hash_checks);
  resp->set_hash_mismatches(hash_mismatches);
  resp->set_kvbm_instances(kvbm_instances);
  resp->set_kvbm_refused(kvbm_refused);
  predictions_->Fill(resp);
}

grpc::Status KvIndexService::Stats(grpc::ServerContext*, const v1::StatsRequest*,
                                   v1::StatsResponse* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  FillStats(resp);
  return grpc::Status::OK;
}

void KvIndexService::FillPod(index::PublisherId id, v1::Pod* pod) const {
  const index::PublisherSlot* s = index_->publisher_slot(id);
  if (s == nullptr) return;
  pod->set_pod(Str(s->id.pod, sizeof(s->id.pod)));
  pod->set_dp_rank(s->id.dp_rank);
  if (const index::NamespaceSlot* nss =
          index_->namespace_slot(static_cast<index::NamespaceId>(s->id.ns))) {
    pod->set_model(Str(nss->model, sizeof(nss->model)));
  }
  pod->set_endpoint(Str(s->id.endpoint, sizeof(s->id.endpoint)));
  pod->set_replay_endpoint(Str(s->id.replay_endpoint, sizeof(s->id.replay_endpoint)));
  pod->set_topic(Str(s->id.topic, sizeof(s->id.topic)));
  pod->set_dialect(Str(s->id.dialect, sizeof(s->id.dialect)));
  pod->set_worker(s->id.worker);
  FillFreshness(*s, pod->mutable_freshness());
  pod->set_last_seq(Ld(s->ingest.last_seq));
  pod->set_has_seq(Ld(s->ingest.has_seq) != 0);
  pod->set_pairs(Ld(s->index.pairs));
  pod->set_quota_pairs(Ld(s->id.quota_pairs));
  if (Ld(s->ingest.has_instance) != 0)
    pod->set_kvbm_instance(wire::U128Decimal(Ld(s->ingest.instance_hi), Ld(s->ingest.instance_lo)));
  auto& c = *pod->mutable_counters();
  c["batches"] = Ld(s->ingest.batches);
  c["events"] = Ld(s->ingest.events);
  c["stored_blocks"] = Ld(s->index.stored_blocks);
  c["removed_blocks"] = Ld(s->index.removed_blocks);
  c["duplicate_stores"] = Ld(s->index.duplicate_stores);
  c["unknown_removes"] = Ld(s->index.unknown_removes);
  c["orphan_blocks"] = Ld(s->index.orphan_blocks);
  c["unresolved_blocks"] = Ld(s->index.unresolved_blocks);
  c["clears"] = Ld(s->index.clears);
  c["evicted_pairs"] = Ld(s->index.evicted_pairs);
  c["rejected_stores"] = Ld(s->index.rejected_stores);
  c["decode_errors"] = Ld(s->ingest.decode_errors);
  c["gaps"] = Ld(s->ingest.gaps);
  c["replays"] = Ld(s->ingest.replays);
  c["replay_batches"] = Ld(s->ingest.replay_batches);
  c["resyncs"] = Ld(s->ingest.resyncs);
  c["probes"] = Ld(s->ingest.probes);
  c["restarts"] = Ld(s->ingest.restarts);
  c["unverifiable_gaps"] = Ld(s->ingest.unverifiable_gaps);
  c["stale_drops"] = Ld(s->ingest.stale_drops);
  c["block_size_mismatches"] = Ld(s->ingest.block_size_mismatches);
  c["hash_checks"] = Ld(s->ingest.hash_checks);
  c["hash_mismatches"] = Ld(s->ingest.hash_mismatches);
  c["last_hash_mismatch"] = Ld(s->ingest.last_hash_mismatch);
  c["kvbm_instances"] = Ld(s->ingest.kvbm_instances);
  c["kvbm_refused"] = Ld(s->ingest.kvbm_refused);
  c["engine_table_full"] = Ld(s->index.engine_table_full);
  c["engine_hash_conflicts"] = Ld(s->index.engine_hash_conflicts);
  c["foreign_model_events"] = Ld(s->ingest.foreign_model_events);
  c["adapter_limit_events"] = Ld(s->ingest.adapter_limit_events);
  c["budget_drops"] = Ld(s->ingest.budget_drops);
  c["buffered_bytes"] = Ld(s->ingest.buffered_bytes);
  c["sequence_bytes"] = Ld(s->ingest.sequence_bytes);
  c["mismatched_block_size"] = Ld(s->ingest.mismatched_block_size);
  c["connects"] = Ld(s->ingest.connects);
  c["disconnects"] = Ld(s->ingest.disconnects);
  c["connect_retries"] = Ld(s->ingest.connect_retries);
  const auto codes = PublisherErrorCodes(*s);
  for (int i = 0; i < kAibrixCodes; ++i)
    if (codes[i] != 0) (*pod->mutable_error_codes())[kFirstAibrixCode + i] = codes[i];
}

grpc::Status KvIndexService::ListPods(grpc::ServerContext*, const v1::ListPodsRequest*,
                                      v1::ListPodsResponse* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  for (auto id : index_->ActivePublishers()) FillPod(id, resp->add_pods());
  return grpc::Status::OK;
}

grpc::Status KvIndexService::GetPod(grpc::ServerContext*, const v1::GetPodRequest* req,
                                    v1::Pod* resp) {
  InflightGuard guard(inflight_, static_cast<int>(config_.max_inflight_rpcs));
  if (!guard.ok()) return Overloaded();
  auto id = index_->FindPublisher(req->pod(), req->dp_rank());
  if (!id) {
    return Error(grpc::StatusCode::NOT_FOUND, "UNKNOWN_POD",
                 absl::StrCat("no publisher ", req->pod(), "/", req->dp_rank()));
  }
  FillPod(*id, resp);
  return grpc::Status::OK;
}

void KvIndexService::FillApplied(const control::RingEntry& e, v1::AppliedEvent* a) const {
  a->set_kind(static_cast<v1::AppliedEvent::Kind>(e.kind));
  a->set_blocks(e.blocks);
  a->set_first_block_key(e.first_key);
  a->set_wall_time_ns(e.wall_ns);
  if (const index::PublisherSlot* s = index_->publisher_slot(e.publisher)) {
    a->set_pod(Str(s->id.pod, sizeof(s->id.pod)));
    a->set_dp_rank(s->id.dp_rank);
  }
  if (const index::NamespaceSlot* nss = index_->namespace_slot(e.ns)) {
    a->set_model(Str(nss->model, sizeof(nss->model)));
  }
}

grpc::Status KvIndexService::WatchEvents(grpc::ServerContext* ctx,
                                         const v1::WatchEventsRequest* req,
                                         grpc::ServerWriter<v1::WatchEvent>* writer) {
  return Watch(
      *req, [ctx] { return ctx->IsCancelled(); },
      [writer](const v1::WatchEvent& ev) { return writer->Write(ev); });
}

grpc::Status KvIndexService::Watch(const v1::WatchEventsRequest& req,
                                   const std::function<bool()>& cancelled,
                                   const std::function<bool(const v1::WatchEvent&)>& write) {
  InflightGuard streams(watch_streams_, static_cast<int>(config_.max_watch_streams));
  if (!streams.ok()) {
    counters_.overloaded.fetch_add(1);
    return Error(grpc::StatusCode::RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS",
                 absl::StrCat("at most ", config_.max_watch_streams, " event streams"));
  }
  const int64_t stats_interval_ms =
      req.stats_interval_ms() == 0
          ? 0
          : std::max<int64_t>(req.stats_interval_ms(), config_.min_stats_interval_ms);
  // Readers start at the rings' current heads: a watcher sees what is applied after it started.
  std::vector<control::RingReader> rings;
  for (uint32_t w = 0; w < control::kMaxWorkers; ++w) rings.emplace_back(*control_, w);
  int64_t next_stats = MonotonicNanos();
  while (!cancelled()) {
    bool sent = false;
    for (control::RingReader& ring : rings) {
      const bool open = ring.Poll([&](const control::RingEntry& e, uint64_t missed) {
        v1::WatchEvent ev;
        FillApplied(e, ev.mutable_applied());
        ev.set_missed(missed);
        sent = true;
        return write(ev);
      });
      if (!open) return grpc::Status::OK;
    }
    if (stats_interval_ms > 0 && MonotonicNanos() >= next_stats) {
      next_stats = MonotonicNanos() + stats_interval_ms * 1'000'000;
      v1::WatchEvent ev;
      FillStats(ev.mutable_stats());
      if (!write(ev)) return grpc::Status::OK;
    }
    if (!sent) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return grpc::Status::OK;
}

grpc::Status KvIndexService::Ping(grpc::ServerContext*, const v1::PingRequest*, v1::PingResponse*) {
  return grpc::Status::OK;
}

}  // namespace kvidx::query
