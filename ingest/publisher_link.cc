#include "ingest/publisher_link.h"

#include <xxhash.h>

#include <atomic>
#include <random>

#include "absl/strings/str_cat.h"

#include "shared/clock.h"
#include "shared/log.h"

namespace kvidx::ingest {

using index::AddRelaxed;
using index::Ld;
using index::St;

namespace {

uint64_t ReadSeq(const zmq::message_t& m) {
  const auto* p = static_cast<const uint8_t*>(m.data());
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

std::span<const uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const uint8_t*>(m.data()), m.size()};
}

inline void Barrier() { std::atomic_signal_fence(std::memory_order_seq_cst); }

static_assert(static_cast<int>(DecodeReason::kNumReasons) <= index::kDecodeReasonSlots,
              "the segment has a counter slot for every decode reason");

}  // namespace

PublisherLink::PublisherLink(zmq::context_t& ctx, index::PrefixIndex* index, Applier* applier,
                             index::PublisherId id, PublisherConfig config, LinkOptions options)
    : ctx_(ctx),
      index_(index),
      applier_(applier),
      id_(id),
      config_(std::move(config)),
      options_(options),
      instances_(options.max_kvbm_instances, int64_t{options.drop_after_ms} * 1'000'000) {}

PublisherLink::~PublisherLink() {
  if (index::PublisherIngestState* s = slot()) St(s->connected, 0u);
  CloseSockets();
}

// The monitor first: libzmq's IO thread sends a monitored socket's events (a disconnection as
// the socket closes among them) with a blocking send on a PAIR socket, and a PAIR socket whose
// reader is gone blocks. Closing the reader before the monitored socket therefore could hang
// the IO thread, and with it every socket of the worker (seen in tests/soak: all engines went
// silent after a publisher was relinked).
void PublisherLink::CloseSockets() {
  if (sub_) (void)zmq_socket_monitor(sub_->handle(), nullptr, 0);
  sub_.reset();
  dealer_.reset();
  monitor_.reset();
}

index::PublisherIngestState* PublisherLink::slot() { return index_->ingest_state(id_); }

// The machine's persisted state, as the slot holds it.
StreamPersisted LoadPersisted(const index::PublisherIngestState* s) {
  StreamPersisted p;
  if (s == nullptr) return p;
  p.has_seq = Ld(s->has_seq) != 0;
  p.last_seq = Ld(s->last_seq);
  uint32_t valid = Ld(s->digest_valid);
  for (int i = 0; i < kDigestRing; ++i) {
    p.ring[i].valid = (valid >> i) & 1u;
    p.ring[i].seq = Ld(s->digest_seq[i]);
    p.ring[i].digest = Ld(s->digest[i]);
  }
  return p;
}

absl::Status PublisherLink::Start() {
  try {
    // Reconnect intervals with jitter, so a fleet of links does not retry in lockstep; libzmq
    // doubles the interval up to the maximum.
    thread_local std::mt19937 rng(std::random_device{}());
    auto ivl = static_cast<int>(options_.reconnect_initial_ms *
                                (0.8 + 0.4 * static_cast<double>(rng() % 1000) / 1000.0));
    reconnect_ivl_ms_ = ivl;
    CloseSockets();  // a link started again
    sub_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::sub);
    sub_->set(zmq::sockopt::rcvhwm, QueueHwm());
    sub_->set(zmq::sockopt::linger, static_cast<int>(options_.linger_ms));
    sub_->set(zmq::sockopt::reconnect_ivl, reconnect_ivl_ms_);
    sub_->set(zmq::sockopt::reconnect_ivl_max, static_cast<int>(options_.reconnect_max_ms));
    sub_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options_.limits.max_payload_bytes));
    sub_->set(zmq::sockopt::subscribe, config_.topic);
    // Unique for the process's life: a link made at the address of one just destroyed must not
    // reuse its endpoint (the old monitor unbinds asynchronously; the new one would not bind).
    static std::atomic<uint64_t> monitors{0};
    monitor_endpoint_ = absl::StrCat("inproc://kvidx-mon-", id_, "-", monitors.fetch_add(1));
    if (zmq_socket_monitor(sub_->handle(), monitor_endpoint_.c_str(),
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED |
                               ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_ACCEPTED) != 0) {
      return absl::InternalError(
          absl::StrCat("publisher ", config_.pod, ": socket monitor: ", zmq_strerror(zmq_errno())));
    }
    monitor_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::pair);
    monitor_->connect(monitor_endpoint_);
    if (config_.bind) {
      sub_->bind(config_.endpoint);
    } else {
      sub_->connect(config_.endpoint);
    }
  } catch (const zmq::error_t& e) {
    return absl::UnavailableError(absl::StrCat("publisher ", config_.pod, ": ", e.what()));
  }
  if (!config_.replay_endpoint.empty()) {
    absl::Status st = OpenDealer();
    if (!st.ok()) return st;
  }
  StreamOptions so;
  so.has_replay = dealer_ != nullptr;
  so.replay_timeout_ns = int64_t{options_.replay_timeout_ms} * 1'000'000;
  so.idle_probe_ns = int64_t{options_.idle_probe_ms} * 1'000'000;
  so.max_buffered = options_.max_buffered_batches;
  so.max_buffered_bytes = options_.replay_buffer_bytes;
  if (index::PublisherIngestState* s = slot()) {
    St(s->budget_bytes,
       options_.queue_bytes + options_.replay_buffer_bytes + options_.sequence_table_bytes);
  }
  so.unreachable_after_ns = int64_t{options_.unreachable_after_ms} * 1'000'000;
  so.drop_after_ns = int64_t{options_.drop_after_ms} * 1'000'000;
  if (index::PublisherIngestState* s = slot(); s != nullptr && Ld(s->resync_pending) != 0) {
    KVIDX_LOG_WARN("publisher %s/%u: finishing a resync a dead worker began", config_.pod.c_str(),
                   config_.dp_rank);
    FinishResync();
  }
  if (index::PublisherIngestState* s = slot();
      s != nullptr && config_.dialect == Dialect::kSeqId && Ld(s->has_seq) != 0) {
    // The sequence-id form's tables (which block numbers of which sequence hold what) live in
    // the worker that built them: a new worker could not resolve this publisher's removals.
    // Start it over from the engine's replay instead of resuming.
    Resync("sequence-id tables are rebuilt from a replay after a worker restart");
  }
  RestoreInstances();
  machine_ = std::make_unique<StreamMachine>(so, LoadPersisted(slot()));
  // Worker start, restart or a new endpoint: nothing is applied before continuity is checked.
  StreamMachine::Actions out;
  machine_->Start(MonotonicNanos(), &out);
  Carry(out);
  return absl::OkStatus();
}

absl::Status PublisherLink::OpenDealer() {
  try {
    dealer_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
    dealer_->set(zmq::sockopt::linger, static_cast<int>(options_.linger_ms));
    dealer_->set(zmq::sockopt::reconnect_ivl, reconnect_ivl_ms_);
    dealer_->set(zmq::sockopt::reconnect_ivl_max, static_cast<int>(options_.reconnect_max_ms));
    dealer_->set(zmq::sockopt::rcvhwm, QueueHwm());
    dealer_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options_.limits.max_payload_bytes));
    dealer_->connect(config_.replay_endpoint);
  } catch (const zmq::error_t& e) {
    return absl::UnavailableError(
        absl::StrCat("publisher ", config_.pod, ": replay socket: ", e.what()));
  }
  return absl::OkStatus();
}

void PublisherLink::AppendPollItems(std::vector<zmq::pollitem_t>* items) {
  items->push_back({sub_->handle(), 0, ZMQ_POLLIN, 0});
  items->push_back({monitor_->handle(), 0, ZMQ_POLLIN, 0});
  if (dealer_) items->push_back({dealer_->handle(), 0, ZMQ_POLLIN, 0});
}

void PublisherLink::Handle(const zmq::pollitem_t* items) {
  // Connect events first, whatever poll reported: a new connection's monitor event is queued
  // before its first message can arrive (the handshake comes between), so a batch of a new
  // engine process is never taken before the continuity check its connection starts.
  OnMonitor();
  if (dealer_ && (items[2].revents & ZMQ_POLLIN)) OnDealer();
  if (items[0].revents & ZMQ_POLLIN) {
    OnMonitor();
    OnSub();
  }
}

void PublisherLink::OnMonitor() {
  for (int i = 0; i < 64; ++i) {
    std::vector<zmq::message_t> parts;
    if (!zmq::recv_multipart(*monitor_, std::back_inserter(parts), zmq::recv_flags::dontwait)) {
      return;
    }
    if (parts.empty() || parts[0].size() < 2) continue;
    uint16_t event;
    std::memcpy(&event, parts[0].data(), sizeof(event));
    index::PublisherIngestState* s = slot();
    if (s == nullptr) continue;
    switch (event) {
      case ZMQ_EVENT_CONNECTED:
      case ZMQ_EVENT_ACCEPTED: {
        St(s->connected, 1u);
        St(s->connected_since_wall_ns, WallNanos());
        AddRelaxed(s->connects, uint64_t{1});
        StreamMachine::Actions out;
        machine_->Connected(MonotonicNanos(), &out);
        Carry(out);
        break;
      }
      case ZMQ_EVENT_DISCONNECTED: {
        St(s->connected, 0u);
        AddRelaxed(s->disconnects, uint64_t{1});
        StreamMachine::Actions out;
        machine_->Disconnected(MonotonicNanos(), &out);
        Carry(out);
        break;
      }
      case ZMQ_EVENT_CONNECT_RETRIED:
        AddRelaxed(s->connect_retries, uint64_t{1});
        break;
      default:
        break;
    }
  }
}

void PublisherLink::OnSub() {
  // Bounded per poll round so that one busy publisher cannot starve the others.
  for (int i = 0; i < 512; ++i) {
    std::vector<zmq::message_t> parts;
    try {
      if (!zmq::recv_multipart(*sub_, std::back_inserter(parts), zmq::recv_flags::dontwait)) return;
    } catch (const zmq::error_t& e) {
      KVIDX_LOG_ERROR("publisher %s: receive failed: %s", config_.pod.c_str(), e.what());
      return;
    }
    HandleLive(parts);
  }
}

void PublisherLink::HandleLive(std::vector<zmq::message_t>& parts) {
  index::IngestCounters* h = index_->ingest_counters();
  if (parts.size() == 3 && parts[1].size() == 8) {
    std::span<const uint8_t> payload = Bytes(parts[2]);
    StreamMachine::Actions out;
    KVIDX_LOG_DEBUG("publisher %s: live %lu", config_.pod.c_str(),
                    static_cast<unsigned long>(ReadSeq(parts[1])));
    machine_->Live(ReadSeq(parts[1]), XXH3_64bits(payload.data(), payload.size()), payload.data(),
                   payload.size(), MonotonicNanos(), &out);
    Carry(out);
    return;
  }
  // wire.md §10: publishers of the map dialects may send the payload alone; sequence checking
  // is then off for them.
  if (parts.size() == 1 && config_.dialect != Dialect::kVllm &&
      config_.dialect != Dialect::kSglang) {
    ApplyBatch(std::nullopt, 0, Bytes(parts[0]));
    return;
  }
  AddRelaxed(h->garbage_frames, uint64_t{1});
  if (index::PublisherIngestState* s = slot()) AddRelaxed(s->decode_errors, uint64_t{1});
  KVIDX_LOG_DEBUG("publisher %s: dropped a message of %zu frames", config_.pod.c_str(),
                  parts.size());
}

void PublisherLink::Carry(StreamMachine::Actions& actions) {
  index::PublisherIngestState* s = slot();
  for (StreamAction& a : actions) {
    KVIDX_LOG_DEBUG("publisher %s: action %d seq %lu", config_.pod.c_str(),
                    static_cast<int>(a.kind), static_cast<unsigned long>(a.seq));
    switch (a.kind) {
      case StreamAction::kApply:
        ApplyBatch(a.seq, machine_->persisted().ring[a.seq % kDigestRing].digest, a.payload);
        break;
      case StreamAction::kResync:
        Resync(a.reason);
        break;
      case StreamAction::kResetReplay:
        // A new socket: no reply to an earlier request can reach it.
        dealer_.reset();
        if (absl::Status st = OpenDealer(); !st.ok())
          KVIDX_LOG_ERROR("%s", std::string(st.message()).c_str());
        break;
      case StreamAction::kRequestReplay:
        SendReplayRequest(a.seq);
        break;
      case StreamAction::kState: {
        if (s != nullptr) {
          St(s->stream_state, static_cast<uint32_t>(a.state));
          St(s->gap_open, static_cast<uint32_t>(a.state == StreamState::kReplaying ||
                                                a.state == StreamState::kStarting));
          St(s->reachable, static_cast<uint32_t>(a.state != StreamState::kUnreachable));
        }
        // One line per state change, at most one a second per publisher (the rest counted).
        int64_t now = MonotonicNanos();
        if (now - last_state_log_ns_ >= 1'000'000'000 || a.state == StreamState::kUnreachable) {
          KVIDX_LOG_INFO("publisher %s/%u: %s (%s)%s", config_.pod.c_str(), config_.dp_rank,
                         StreamStateName(a.state), a.reason,
                         suppressed_logs_ != 0
                             ? absl::StrCat(" [", suppressed_logs_, " changes not logged]").c_str()
                             : "");
          last_state_log_ns_ = now;
          suppressed_logs_ = 0;
        } else {
          ++suppressed_logs_;
        }
        break;
      }
    }
  }
  actions.clear();
  MirrorCounters();
}

int PublisherLink::QueueHwm() const {
  const uint64_t per = std::max<uint64_t>(options_.limits.max_payload_bytes, 1);
  const uint64_t by_bytes = std::max<uint64_t>(options_.queue_bytes / per, 1);
  const uint64_t configured =
      options_.rcvhwm > 0 ? static_cast<uint64_t>(options_.rcvhwm) : by_bytes;
  return static_cast<int>(std::min<uint64_t>({configured, by_bytes, uint64_t{INT32_MAX}}));
}

void PublisherLink::MirrorCounters() {
  index::PublisherIngestState* s = slot();
  if (s == nullptr || !machine_) return;
  const StreamCounters& c = machine_->counters();
  AddRelaxed(s->gaps, c.gaps - mirrored_.gaps);
  AddRelaxed(s->replays, c.replays + c.retries - mirrored_.replays - mirrored_.retries);
  AddRelaxed(s->probes, c.probes - mirrored_.probes);
  AddRelaxed(s->restarts, c.restarts - mirrored_.restarts);
  AddRelaxed(s->unverifiable_gaps, c.unverifiable - mirrored_.unverifiable);
  AddRelaxed(s->budget_drops, c.buffer_overflows - mirrored_.buffer_overflows);
  St(s->buffered_bytes, uint64_t{machine_->buffered_bytes()});
  mirrored_ = c;
  if (machine_->reachable()) St(s->last_heard_wall_ns, WallNanos());
  MirrorToInstances();
}

void PublisherLink::SendReplayRequest(uint64_t from) {
  if (!dealer_) return;
  uint8_t seq8[8];
  for (int i = 0; i < 8; ++i) seq8[i] = static_cast<uint8_t>(from >> (56 - 8 * i));
  try {
    // Not sent (no peer, queue full): the machine's deadline sends it again on a new socket.
    if (dealer_->send(zmq::message_t(), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
      dealer_->send(zmq::message_t(seq8, 8), zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    KVIDX_LOG_DEBUG("publisher %s: replay request not sent: %s", config_.pod.c_str(), e.what());
  }
}

void PublisherLink::ApplyBatch(std::optional<uint64_t> seq, uint64_t digest,
                               std::span<const uint8_t> payload) {
  index::PublisherIngestState* s = slot();
  if (s == nullptr) return;
  index::IngestCounters* h = index_->ingest_counters();
  const int64_t t0 = MonotonicNanos();
  EventBatch batch;
  index::PublisherId target = id_;
  bool shutdown = false;
  DecodeReason reason = DecodeReason::kOk;
  absl::Status st = DecodeBatch(payload, config_.dialect, &batch, &reason, options_.limits);
  if (!st.ok()) {
    AddRelaxed(h->decode_errors[static_cast<int>(reason)], uint64_t{1});
    AddRelaxed(s->decode_errors, uint64_t{1});
    KVIDX_LOG_WARN("publisher %s/%u: batch rejected: %s", config_.pod.c_str(), config_.dp_rank,
                   std::string(st.message()).c_str());
  } else {
    // A KVBM batch goes to its instance's publisher (one endpoint may carry several).
    std::optional<index::PublisherId> to = id_;
    if (batch.instance_id) to = RouteInstance(*batch.instance_id);
    if (to) target = *to;
    uint64_t skip = 0;
    if (seq && to) skip = index_->BeginBatch(target, *seq).value_or(0);
    const index::PublisherSlot* ps = index_->publisher_slot(target);
    const uint64_t dups = ps != nullptr ? Ld(ps->index.duplicate_stores) : 0;
    absl::Status ast = to ? applier_->Apply(target, batch, skip) : absl::OkStatus();
    if (ps != nullptr && Ld(ps->index.duplicate_stores) != dups) {
      KVIDX_LOG_DEBUG("publisher %s: batch %ld: %lu duplicate stores (skipped %lu ops)",
                      config_.pod.c_str(), seq ? static_cast<long>(*seq) : -1L,
                      static_cast<unsigned long>(Ld(ps->index.duplicate_stores) - dups),
                      static_cast<unsigned long>(skip));
    }
    if (!ast.ok()) {
      KVIDX_LOG_WARN("publisher %s: apply: %s", config_.pod.c_str(),
                     std::string(ast.message()).c_str());
    }
    AddRelaxed(h->unknown_events, uint64_t{batch.unknown_events});
    const int64_t took = MonotonicNanos() - t0;
    AddRelaxed(h->apply_latency_buckets[index::LatencyBucket(took)], uint64_t{1});
    AddRelaxed(h->apply_latency_sum_ns, static_cast<uint64_t>(took));
    AddRelaxed(h->batches_applied, uint64_t{1});
    AddRelaxed(h->events_applied, uint64_t{batch.events.size()});
    AddRelaxed(s->events, uint64_t{batch.events.size()});
    shutdown = batch.instance_id && !batch.events.empty() &&
               batch.events.back().kind == EventKind::kCleared;
    if (target != id_) {
      if (index::PublisherIngestState* t = index_->ingest_state(target))
        St(t->last_event_wall_ns, WallNanos());
    }
  }
  AddRelaxed(s->batches, uint64_t{1});
  St(s->last_event_wall_ns, WallNanos());
  if (seq) {
    // The digest first: an entry is only ever consulted for a sequence at or below last_seq.
    int i = static_cast<int>(*seq % kDigestRing);
    St(s->digest_seq[i], *seq);
    St(s->digest[i], digest);
    St(s->digest_valid, Ld(s->digest_valid) | (1u << i));
    Barrier();
    St(s->last_seq, *seq);
    St(s->has_seq, 1u);
    (void)index_->CommitBatch(target);
  }
  if (shutdown) ReleaseInstance(*batch.instance_id);
}

void PublisherLink::OnDealer() {
  for (int i = 0; i < 1024 && dealer_; ++i) {
    std::vector<zmq::message_t> parts;
    try {
      if (!zmq::recv_multipart(*dealer_, std::back_inserter(parts), zmq::recv_flags::dontwait)) {
        return;
      }
    } catch (const zmq::error_t&) {
      return;
    }
    // ["", seq8, payload] (vLLM < 0.26, SGLang) or ["", topic, seq8, payload] (vLLM >= 0.26).
    const zmq::message_t* seq = nullptr;
    const zmq::message_t* payload = nullptr;
    if (parts.size() == 3 && parts[0].size() == 0) {
      seq = &parts[1];
      payload = &parts[2];
    } else if (parts.size() == 4 && parts[0].size() == 0) {
      seq = &parts[2];
      payload = &parts[3];
    }
    if (seq == nullptr || seq->size() != 8) {
      AddRelaxed(index_->ingest_counters()->garbage_frames, uint64_t{1});
      continue;
    }
    uint64_t s = ReadSeq(*seq);
    StreamMachine::Actions out;
    KVIDX_LOG_DEBUG("publisher %s: replay %ld", config_.pod.c_str(),
                    s == kReplayEndSeq ? -1L : static_cast<long>(s));
    if (s == kReplayEndSeq && payload->size() == 0) {
      machine_->ReplayEnd(MonotonicNanos(), &out);
    } else {
      if (index::PublisherIngestState* ps = slot()) AddRelaxed(ps->replay_batches, uint64_t{1});
      std::span<const uint8_t> p = Bytes(*payload);
      machine_->ReplayBatch(s, XXH3_64bits(p.data(), p.size()), p.data(), p.size(),
                            MonotonicNanos(), &out);
    }
    Carry(out);  // may reset the DEALER: the loop ends then
  }
}

void PublisherLink::Tick(int64_t now_ns) {
  StreamMachine::Actions out;
  machine_->Tick(now_ns, &out);
  Carry(out);
}

namespace {
void FinishResyncOf(index::PrefixIndex* index, Applier* applier, index::PublisherId id) {
  index::PublisherIngestState* s = index->ingest_state(id);
  if (s == nullptr) return;
  St(s->has_seq, 0u);
  St(s->digest_valid, 0u);
  (void)index->ResetBatch(id);
  Barrier();
  (void)index->ClearPublisher(id);
  applier->Forget(id);
  AddRelaxed(s->epoch, uint64_t{1});
  Barrier();
  St(s->resync_pending, 0u);
}
}  // namespace

void ResyncPublisher(index::PrefixIndex* index, Applier* applier, index::PublisherId id) {
  index::PublisherIngestState* s = index->ingest_state(id);
  if (s == nullptr) return;
  St(s->resync_pending, 1u);
  Barrier();
  FinishResyncOf(index, applier, id);
  AddRelaxed(s->resyncs, uint64_t{1});
}

void PublisherLink::FinishResync() {
  ForgetInstances();
  FinishResyncOf(index_, applier_, id_);
}

void PublisherLink::Resync(const char* why) {
  index::PublisherIngestState* s = slot();
  if (s == nullptr) return;
  KVIDX_LOG_WARN("publisher %s/%u: resync (%s): dropping its residencies", config_.pod.c_str(),
                 config_.dp_rank, why);
  // Marked first: a worker that dies anywhere below leaves its successor to finish the resync
  // (Start) before it trusts anything, so the publisher is never half-cleared but still trusted
  // nor cleared but resumed as if whole.
  St(s->resync_pending, 1u);
  Barrier();
  FinishResync();
  AddRelaxed(s->resyncs, uint64_t{1});
  if (std::string_view(why).starts_with("engine unreachable"))
    AddRelaxed(s->stale_drops, uint64_t{1});
}

}  // namespace kvidx::ingest
