#include "ingest/publisher_link.h"

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

}  // namespace

PublisherLink::PublisherLink(zmq::context_t& ctx, index::PrefixIndex* index, Applier* applier,
                             index::PublisherId id, PublisherConfig config, LinkOptions options)
    : ctx_(ctx),
      index_(index),
      applier_(applier),
      id_(id),
      config_(std::move(config)),
      options_(options) {}

PublisherLink::~PublisherLink() {
  if (index::PublisherSlot* s = slot()) St(s->connected, 0u);
}

index::PublisherSlot* PublisherLink::slot() { return index_->mutable_publisher_slot(id_); }

std::optional<uint64_t> PublisherLink::Expected() {
  index::PublisherSlot* s = slot();
  if (s == nullptr || Ld(s->has_seq) == 0) return std::nullopt;
  return Ld(s->last_seq) + 1;
}

absl::Status PublisherLink::Start() {
  try {
    // Reconnect intervals with jitter, so a fleet of links does not retry in lockstep; libzmq
    // doubles the interval up to the maximum.
    thread_local std::mt19937 rng(std::random_device{}());
    int ivl = static_cast<int>(options_.reconnect_initial_ms *
                               (0.8 + 0.4 * static_cast<double>(rng() % 1000) / 1000.0));
    sub_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::sub);
    sub_->set(zmq::sockopt::rcvhwm, options_.rcvhwm);
    sub_->set(zmq::sockopt::linger, 0);
    sub_->set(zmq::sockopt::reconnect_ivl, ivl);
    sub_->set(zmq::sockopt::reconnect_ivl_max, static_cast<int>(options_.reconnect_max_ms));
    sub_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options_.limits.max_payload_bytes));
    sub_->set(zmq::sockopt::subscribe, config_.topic);
    monitor_endpoint_ =
        absl::StrCat("inproc://kvidx-mon-", id_, "-", reinterpret_cast<uintptr_t>(this));
    zmq_socket_monitor(sub_->handle(), monitor_endpoint_.c_str(),
                       ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED |
                           ZMQ_EVENT_ACCEPTED);
    monitor_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::pair);
    monitor_->connect(monitor_endpoint_);
    if (config_.bind) {
      sub_->bind(config_.endpoint);
    } else {
      sub_->connect(config_.endpoint);
    }
    if (!config_.replay_endpoint.empty()) {
      dealer_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
      dealer_->set(zmq::sockopt::linger, 0);
      dealer_->set(zmq::sockopt::reconnect_ivl, ivl);
      dealer_->set(zmq::sockopt::reconnect_ivl_max, static_cast<int>(options_.reconnect_max_ms));
      dealer_->set(zmq::sockopt::rcvhwm, 0);
      dealer_->set(zmq::sockopt::maxmsgsize,
                   static_cast<int64_t>(options_.limits.max_payload_bytes));
      dealer_->connect(config_.replay_endpoint);
    }
  } catch (const zmq::error_t& e) {
    return absl::UnavailableError(absl::StrCat("publisher ", config_.pod, ": ", e.what()));
  }
  // Resume: a worker that restarts asks for everything after the last applied batch.
  if (auto expected = Expected()) {
    StartReplay(*expected, /*first_contact=*/false);
  } else {
    StartReplay(0, /*first_contact=*/true);
  }
  return absl::OkStatus();
}

void PublisherLink::AppendPollItems(std::vector<zmq::pollitem_t>* items) {
  items->push_back({sub_->handle(), 0, ZMQ_POLLIN, 0});
  items->push_back({monitor_->handle(), 0, ZMQ_POLLIN, 0});
  if (dealer_) items->push_back({dealer_->handle(), 0, ZMQ_POLLIN, 0});
}

void PublisherLink::Handle(const zmq::pollitem_t* items) {
  if (items[1].revents & ZMQ_POLLIN) OnMonitor();
  if (dealer_ && (items[2].revents & ZMQ_POLLIN)) OnDealer();
  if (items[0].revents & ZMQ_POLLIN) OnSub();
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
    index::PublisherSlot* s = slot();
    if (s == nullptr) continue;
    switch (event) {
      case ZMQ_EVENT_CONNECTED:
      case ZMQ_EVENT_ACCEPTED:
        St(s->connected, 1u);
        St(s->connected_since_wall_ns, WallNanos());
        AddRelaxed(s->connects, uint64_t{1});
        KVIDX_LOG_INFO("publisher %s/%u: connected", config_.pod.c_str(), config_.dp_rank);
        break;
      case ZMQ_EVENT_DISCONNECTED:
        St(s->connected, 0u);
        AddRelaxed(s->disconnects, uint64_t{1});
        KVIDX_LOG_WARN("publisher %s/%u: disconnected", config_.pod.c_str(), config_.dp_rank);
        break;
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
  last_activity_ns_ = MonotonicNanos();
  index::SegmentHeader* h = index_->mutable_header();
  if (parts.size() == 3 && parts[1].size() == 8) {
    HandleSequenced(ReadSeq(parts[1]), Bytes(parts[2]), /*from_replay=*/false);
    return;
  }
  // wire.md §10: publishers of the map dialects may send the payload alone; sequence checking
  // is then off for them.
  if (parts.size() == 1 && config_.dialect != Dialect::kVllm &&
      config_.dialect != Dialect::kSglang) {
    ApplyBatch(std::nullopt, Bytes(parts[0]));
    return;
  }
  AddRelaxed(h->garbage_frames, uint64_t{1});
  if (index::PublisherSlot* s = slot()) AddRelaxed(s->decode_errors, uint64_t{1});
  KVIDX_LOG_DEBUG("publisher %s: dropped a message of %zu frames", config_.pod.c_str(),
                  parts.size());
}

void PublisherLink::HandleSequenced(uint64_t seq, std::span<const uint8_t> payload,
                                    bool from_replay) {
  index::PublisherSlot* s = slot();
  if (s == nullptr) return;
  if (replaying_ && !from_replay) {
    if (buffered_.size() >= options_.max_buffered_batches) {
      // The replay is too slow to catch up: give up on this replay.
      Resync("live buffer overflowed during a replay");
      replaying_ = false;
      St(s->gap_open, 0u);
      buffered_.clear();
    } else {
      buffered_.emplace_back(seq, std::vector<uint8_t>(payload.begin(), payload.end()));
      return;
    }
  }
  std::optional<uint64_t> expected = Expected();
  if (!expected && seq > 0 && !from_replay && StartReplay(0, /*first_contact=*/true)) {
    // First contact in mid-stream: fetch what the engine still has from before this batch.
    buffered_.emplace_back(seq, std::vector<uint8_t>(payload.begin(), payload.end()));
    return;
  }
  if (!expected || seq == *expected) {
    ApplyBatch(seq, payload);
    return;
  }
  if (seq < *expected) {
    if (from_replay) return;  // already applied
    // The engine restarted (sequences start at 0 per process).
    Resync("sequence went backwards (engine restart)");
    if (!StartReplay(0, /*first_contact=*/true))
      ApplyBatch(seq, payload);
    else
      buffered_.emplace_back(seq, std::vector<uint8_t>(payload.begin(), payload.end()));
    return;
  }
  // seq > expected: a gap.
  AddRelaxed(s->gaps, uint64_t{1});
  if (from_replay) {
    Resync("replay has a hole");
    ApplyBatch(seq, payload);
    return;
  }
  KVIDX_LOG_WARN("publisher %s/%u: gap, expected %lu got %lu", config_.pod.c_str(), config_.dp_rank,
                 static_cast<unsigned long>(*expected), static_cast<unsigned long>(seq));
  if (StartReplay(*expected, /*first_contact=*/false)) {
    buffered_.emplace_back(seq, std::vector<uint8_t>(payload.begin(), payload.end()));
    return;
  }
  Resync("gap and no replay endpoint");
  ApplyBatch(seq, payload);
}

void PublisherLink::ApplyBatch(std::optional<uint64_t> seq, std::span<const uint8_t> payload) {
  index::PublisherSlot* s = slot();
  if (s == nullptr) return;
  index::SegmentHeader* h = index_->mutable_header();
  EventBatch batch;
  DecodeReason reason = DecodeReason::kOk;
  absl::Status st = DecodeBatch(payload, config_.dialect, &batch, &reason, options_.limits);
  if (!st.ok()) {
    AddRelaxed(h->decode_errors[static_cast<int>(reason) & 7], uint64_t{1});
    AddRelaxed(s->decode_errors, uint64_t{1});
    KVIDX_LOG_WARN("publisher %s/%u: batch rejected: %s", config_.pod.c_str(), config_.dp_rank,
                   std::string(st.message()).c_str());
  } else {
    if (batch.instance_id) {
      bool had = Ld(s->has_instance) != 0;
      if (had && (Ld(s->instance_hi) != batch.instance_id->first ||
                  Ld(s->instance_lo) != batch.instance_id->second)) {
        Resync("new KVBM instance");
      }
      St(s->instance_hi, batch.instance_id->first);
      St(s->instance_lo, batch.instance_id->second);
      St(s->has_instance, 1u);
    }
    uint64_t skip = 0;
    if (seq) {
      if (Ld(s->batch_pending) && Ld(s->batch_seq) == *seq) {
        skip = Ld(s->applied_ops) - Ld(s->batch_first_op);  // a predecessor died mid-batch
      } else {
        St(s->batch_seq, *seq);
        St(s->batch_first_op, Ld(s->applied_ops));
      }
      Barrier();
      St(s->batch_pending, 1u);
      Barrier();
    }
    absl::Status ast = applier_->Apply(id_, batch, skip);
    if (!ast.ok()) {
      KVIDX_LOG_WARN("publisher %s: apply: %s", config_.pod.c_str(),
                     std::string(ast.message()).c_str());
    }
    AddRelaxed(h->unknown_events, uint64_t{batch.unknown_events});
    AddRelaxed(h->batches_applied, uint64_t{1});
    AddRelaxed(h->events_applied, uint64_t{batch.events.size()});
    AddRelaxed(s->events, uint64_t{batch.events.size()});
  }
  AddRelaxed(s->batches, uint64_t{1});
  St(s->last_event_wall_ns, WallNanos());
  if (seq) {
    St(s->last_seq, *seq);
    St(s->has_seq, 1u);
    Barrier();
    St(s->batch_pending, 0u);
  }
}

bool PublisherLink::StartReplay(uint64_t from, bool first_contact) {
  if (!dealer_) return false;
  uint8_t seq8[8];
  for (int i = 0; i < 8; ++i) seq8[i] = static_cast<uint8_t>(from >> (56 - 8 * i));
  try {
    dealer_->send(zmq::message_t(), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    dealer_->send(zmq::message_t(seq8, 8), zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    KVIDX_LOG_WARN("publisher %s: replay request failed: %s", config_.pod.c_str(), e.what());
    return false;
  }
  replaying_ = true;
  replay_first_ = true;
  first_contact_ = first_contact;
  replay_from_ = from;
  replay_deadline_ns_ = MonotonicNanos() + int64_t{options_.replay_timeout_ms} * 1'000'000;
  if (index::PublisherSlot* s = slot()) {
    AddRelaxed(s->replays, uint64_t{1});
    St(s->gap_open, 1u);
  }
  return true;
}

void PublisherLink::OnDealer() {
  for (int i = 0; i < 1024; ++i) {
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
      AddRelaxed(index_->mutable_header()->garbage_frames, uint64_t{1});
      continue;
    }
    uint64_t s = ReadSeq(*seq);
    if (!replaying_) continue;  // a late reply to a replay already given up on
    if (s == kReplayEndSeq && payload->size() == 0) {
      FinishReplay(/*got_end=*/true);
      continue;
    }
    if (replay_first_) {
      replay_first_ = false;
      if (s > replay_from_ && !first_contact_) {
        // The engine's buffer no longer reaches back to what we need.
        AddRelaxed(slot()->gaps, uint64_t{1});
        Resync("replay starts after the gap");
      }
    }
    if (index::PublisherSlot* ps = slot()) AddRelaxed(ps->replay_batches, uint64_t{1});
    HandleSequenced(s, Bytes(*payload), /*from_replay=*/true);
  }
}

void PublisherLink::FinishReplay(bool got_end) {
  replaying_ = false;
  last_activity_ns_ = MonotonicNanos();
  if (index::PublisherSlot* s = slot()) St(s->gap_open, 0u);
  if (!got_end) {
    KVIDX_LOG_WARN("publisher %s/%u: replay ended without its end marker", config_.pod.c_str(),
                   config_.dp_rank);
  }
  std::deque<std::pair<uint64_t, std::vector<uint8_t>>> pending;
  pending.swap(buffered_);
  for (auto& [seq, payload] : pending) {
    std::optional<uint64_t> expected = Expected();
    if (expected && seq < *expected) continue;  // the replay already covered it
    if (expected && seq > *expected) {
      // Still a hole between the replay and the live stream.
      if (index::PublisherSlot* s = slot()) AddRelaxed(s->gaps, uint64_t{1});
      Resync(got_end ? "replay did not cover the gap" : "replay timed out");
    }
    ApplyBatch(seq, payload);
  }
}

void PublisherLink::Tick(int64_t now_ns) {
  if (replaying_ && now_ns > replay_deadline_ns_) FinishReplay(/*got_end=*/false);
  if (!replaying_ && dealer_ && options_.idle_probe_ms != 0 &&
      now_ns - last_activity_ns_ > int64_t{options_.idle_probe_ms} * 1'000'000) {
    last_activity_ns_ = now_ns;
    std::optional<uint64_t> expected = Expected();
    StartReplay(expected.value_or(0), /*first_contact=*/!expected.has_value());
  }
}

void PublisherLink::Resync(const char* why) {
  index::PublisherSlot* s = slot();
  if (s == nullptr) return;
  KVIDX_LOG_WARN("publisher %s/%u: resync (%s): dropping its residencies", config_.pod.c_str(),
                 config_.dp_rank, why);
  (void)index_->ClearPublisher(id_);
  applier_->Forget(id_);
  AddRelaxed(s->epoch, uint64_t{1});
  AddRelaxed(s->resyncs, uint64_t{1});
  St(s->has_seq, 0u);
  St(s->batch_pending, 0u);
}

}  // namespace kvidx::ingest
