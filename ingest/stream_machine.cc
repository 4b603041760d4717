#include "ingest/stream_machine.h"

#include <algorithm>

namespace kvidx::ingest {

bool StreamPersisted::Find(uint64_t seq, uint64_t* digest) const {
  const Entry& e = ring[seq % kDigestRing];
  if (!e.valid || e.seq != seq) return false;
  *digest = e.digest;
  return true;
}

void StreamPersisted::Record(uint64_t seq, uint64_t digest) {
  ring[seq % kDigestRing] = Entry{seq, digest, true};
  has_seq = true;
  last_seq = seq;
}

void StreamPersisted::Reset() {
  has_seq = false;
  last_seq = 0;
  ring = {};
}

const char* ReplayWhyName(ReplayWhy w) {
  switch (w) {
    case ReplayWhy::kStart:
      return "start";
    case ReplayWhy::kReconnect:
      return "reconnect";
    case ReplayWhy::kGap:
      return "gap";
    case ReplayWhy::kProbe:
      return "idle probe";
    case ReplayWhy::kRetry:
      return "retry after deadline";
    case ReplayWhy::kRestart:
      return "restart check";
  }
  return "?";
}

const char* ResyncWhyName(ResyncWhy w) {
  switch (w) {
    case ResyncWhy::kRestart:
      return "engine restarted";
    case ResyncWhy::kUnverifiable:
      return "unverifiable gap: the engine no longer has batches kvidx never applied";
    case ResyncWhy::kUnreachable:
      return "engine unreachable past the drop time";
    case ResyncWhy::kNoReplay:
      return "gap on a publisher without replay";
  }
  return "?";
}

StreamMachine::StreamMachine(StreamOptions options, StreamPersisted persisted)
    : o_(options), p_(persisted) {}

void StreamMachine::SetState(StreamState s, const char* reason, Actions* out) {
  if (s == state_) return;
  state_ = s;
  StreamAction a{StreamAction::kState};
  a.state = s;
  a.reason = reason;
  out->push_back(std::move(a));
}

void StreamMachine::Start(int64_t now_ns, Actions* out) {
  last_heard_ns_ = now_ns;
  last_live_ns_ = now_ns;
  started_ = false;
  outstanding_ = false;
  ClearBuffer();
  if (!o_.has_replay) {
    started_ = true;
    SetState(StreamState::kStreaming, "no replay endpoint: live stream taken as it comes", out);
    return;
  }
  Request(ReplayWhy::kStart, now_ns, out);
}

void StreamMachine::EndpointChanged(int64_t now_ns, Actions* out) {
  // New sockets: nothing outstanding on them, and nothing buffered from the old peer counts.
  outstanding_ = false;
  ClearBuffer();
  last_live_ns_ = now_ns;
  if (!o_.has_replay) return;
  Request(ReplayWhy::kReconnect, now_ns, out);
}

void StreamMachine::Connected(int64_t now_ns, Actions* out) {
  Heard(now_ns, out);
  if (!o_.has_replay) return;
  // Whoever is on the other end now may be a new engine process: check continuity.
  Request(ReplayWhy::kReconnect, now_ns, out);
}

void StreamMachine::Disconnected(int64_t /*now_ns*/, Actions* /*out*/) {}

void StreamMachine::Heard(int64_t now_ns, Actions* out) {
  last_heard_ns_ = now_ns;
  if (reachable_) return;
  reachable_ = true;
  dropped_unreachable_ = false;
  SetState(outstanding_ ? (started_ ? StreamState::kReplaying : StreamState::kStarting)
                        : StreamState::kStreaming,
           "engine reachable again", out);
}

void StreamMachine::Request(ReplayWhy why, int64_t now_ns, Actions* out) {
  if (outstanding_) out->push_back(StreamAction{StreamAction::kResetReplay});
  outstanding_ = true;
  ++serial_;
  reply_any_ = false;
  first_reply_ = true;
  skip_reply_ = false;
  request_from_ = p_.has_seq ? p_.last_seq : 0;
  deadline_ns_ = now_ns + o_.replay_timeout_ns;
  switch (why) {
    case ReplayWhy::kProbe:
      ++c_.probes;
      break;
    case ReplayWhy::kRetry:
      ++c_.retries;
      break;
    default:
      ++c_.replays;
      break;
  }
  StreamAction a{StreamAction::kRequestReplay};
  a.seq = request_from_;
  a.why = why;
  out->push_back(std::move(a));
  if (reachable_ && why != ReplayWhy::kProbe && why != ReplayWhy::kRetry) {
    SetState(started_ ? StreamState::kReplaying : StreamState::kStarting, ReplayWhyName(why), out);
  }
}

void StreamMachine::Apply(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size,
                          Actions* out) {
  StreamAction a{StreamAction::kApply};
  a.seq = seq;
  a.payload.assign(data, data + size);
  out->push_back(std::move(a));
  p_.Record(seq, digest);
}

void StreamMachine::Resync(ResyncWhy why, Actions* out) {
  ++c_.resyncs;
  p_.Reset();
  StreamAction a{StreamAction::kResync};
  a.resync = why;
  a.reason = ResyncWhyName(why);
  out->push_back(std::move(a));
}

void StreamMachine::RestartDetected(int64_t now_ns, Actions* out) {
  ++c_.restarts;
  Resync(ResyncWhy::kRestart, out);
  ClearBuffer();
  started_ = false;
  Request(ReplayWhy::kRestart, now_ns, out);
}

bool StreamMachine::Old(uint64_t seq, uint64_t digest, bool from_replay, int64_t now_ns,
                        Actions* out) {
  uint64_t recorded = 0;
  if (p_.Find(seq, &recorded) && recorded == digest) {
    ++c_.duplicates;
    return true;
  }
  if (from_replay && p_.Find(seq, &recorded)) {
    // The engine itself answers with other content at an applied sequence: a new process.
    RestartDetected(now_ns, out);
    return false;
  }
  // A live batch with other content than recorded (or older than the recorded digests): a
  // new engine, or a late batch of the old one still in the socket's queue. Only the engine
  // can tell: check continuity (an outstanding request is replaced, so its reply cannot be
  // taken for this check).
  ++c_.suspect;
  if (o_.has_replay) Request(ReplayWhy::kRestart, now_ns, out);
  return true;
}

void StreamMachine::Buffer(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size,
                           int64_t now_ns, Actions* out) {
  auto it = buffer_.find(seq);
  if (it != buffer_.end()) {
    if (it->second.digest == digest) {
      ++c_.duplicates;
      return;
    }
    // Two different batches at one sequence: the engine restarted between them, and which
    // is current only the engine can tell. Drop both, check continuity, let the replay fill.
    ++c_.suspect;
    ClearBuffer();
    Request(ReplayWhy::kRestart, now_ns, out);
    return;
  }
  if (buffer_.size() >= o_.max_buffered || size > o_.max_buffered_bytes - buffered_bytes_) {
    ++c_.buffer_overflows;  // asked for again as a hole once the replay ends
    return;
  }
  buffer_.emplace(seq, Buffered{digest, std::vector<uint8_t>(data, data + size), serial_});
  buffered_bytes_ += size;
}

void StreamMachine::Live(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size,
                         int64_t now_ns, Actions* out) {
  Heard(now_ns, out);
  last_live_ns_ = now_ns;
  ++c_.live;
  if (!o_.has_replay) {
    if (!p_.has_seq || seq == p_.last_seq + 1) {
      Apply(seq, digest, data, size, out);
      return;
    }
    uint64_t recorded = 0;
    if (seq <= p_.last_seq && p_.Find(seq, &recorded) && recorded == digest) {
      ++c_.duplicates;
      return;
    }
    if (seq > p_.last_seq) ++c_.gaps;
    if (seq <= p_.last_seq) ++c_.restarts;
    Resync(seq > p_.last_seq ? ResyncWhy::kNoReplay : ResyncWhy::kRestart, out);
    Apply(seq, digest, data, size, out);
    return;
  }
  if (p_.has_seq && seq <= p_.last_seq) {
    Old(seq, digest, /*from_replay=*/false, now_ns, out);
    return;
  }
  if (outstanding_) {
    Buffer(seq, digest, data, size, now_ns, out);
    return;
  }
  uint64_t next = p_.has_seq ? p_.last_seq + 1 : 0;
  if (seq == next) {
    Apply(seq, digest, data, size, out);
    if (!buffer_.empty()) Drain(now_ns, /*after_reply=*/false, out);
    return;
  }
  ++c_.gaps;
  Buffer(seq, digest, data, size, now_ns, out);
  if (!outstanding_) Request(ReplayWhy::kGap, now_ns, out);
}

void StreamMachine::ReplayBatch(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size,
                                int64_t now_ns, Actions* out) {
  Heard(now_ns, out);
  if (!outstanding_) {
    ++c_.stale_replay;
    return;
  }
  if (first_reply_ && seq < request_from_) {
    ++c_.stale_replay;  // not an answer to the request: the engine replays from the start
    return;
  }
  reply_max_ = reply_any_ ? std::max(reply_max_, seq) : seq;
  reply_any_ = true;
  if (skip_reply_) return;
  if (first_reply_) {
    first_reply_ = false;
    if (p_.has_seq) {
      if (seq == p_.last_seq) {
        uint64_t recorded = 0;
        if (!p_.Find(seq, &recorded) || recorded != digest) RestartDetected(now_ns, out);
        return;  // verified: the same engine; what follows is applied in order
      }
      // The engine's oldest batch is past the last applied one.
      ++c_.unverifiable;
      Resync(ResyncWhy::kUnverifiable, out);
      ClearBuffer();
      Apply(seq, digest, data, size, out);
      return;
    }
    if (seq > 0) ++c_.unverifiable;  // first contact: the engine's buffer no longer starts at 0
    while (!buffer_.empty() && buffer_.begin()->first < seq) Unbuffer(buffer_.begin());
    Apply(seq, digest, data, size, out);
    return;
  }
  if (seq <= p_.last_seq) {
    Old(seq, digest, /*from_replay=*/true, now_ns, out);
    return;
  }
  if (seq == p_.last_seq + 1) {
    Apply(seq, digest, data, size, out);
    return;
  }
  // A hole inside the reply. Frames of it may have been lost on the way (asked again), or the
  // engine does not have that batch at all: the same hole in kHoleReplies replies in a row
  // means the batch is gone for good, and what it held cannot be known.
  const uint64_t hole = p_.last_seq + 1;
  hole_replies_ = hole_at_ == hole ? hole_replies_ + 1 : 1;
  hole_at_ = hole;
  if (hole_replies_ >= kHoleReplies) {
    hole_replies_ = 0;
    ++c_.gaps;
    ++c_.unverifiable;
    Resync(ResyncWhy::kUnverifiable, out);
    ClearBuffer();
    Apply(seq, digest, data, size, out);
    return;
  }
  skip_reply_ = true;  // the rest cannot be applied in order
}

void StreamMachine::ReplayEnd(int64_t now_ns, Actions* out) {
  Heard(now_ns, out);
  if (!outstanding_) {
    ++c_.stale_replay;
    return;
  }
  outstanding_ = false;
  if (first_reply_ && p_.has_seq) {
    // The engine holds nothing at or past the last applied sequence: a new process.
    RestartDetected(now_ns, out);
    return;
  }
  started_ = true;
  Drain(now_ns, /*after_reply=*/true, out);
  if (!outstanding_ && reachable_) SetState(StreamState::kStreaming, "stream whole", out);
}

void StreamMachine::Drain(int64_t now_ns, bool after_reply, Actions* out) {
  const uint64_t answered = serial_;  // the request whose complete reply just ended
  if (after_reply) {
    for (auto it = buffer_.begin(); it != buffer_.end();) {
      bool foreign = it->second.serial < answered && (!reply_any_ || it->first > reply_max_);
      if (foreign) {
        ++c_.stale_live;
        it = Unbuffer(it);
      } else {
        ++it;
      }
    }
  }
  while (!buffer_.empty() && !outstanding_) {
    auto it = buffer_.begin();
    uint64_t seq = it->first;
    if (p_.has_seq && seq <= p_.last_seq) {
      Buffered b = std::move(it->second);
      buffered_bytes_ -= b.payload.size();
      buffer_.erase(it);
      Old(seq, b.digest, /*from_replay=*/false, now_ns, out);
      continue;
    }
    uint64_t next = p_.has_seq ? p_.last_seq + 1 : 0;
    if (seq != next) {
      ++c_.gaps;
      Request(ReplayWhy::kGap, now_ns, out);  // a hole the engine's buffer may still cover
      return;
    }
    Buffered b = std::move(it->second);
    buffered_bytes_ -= b.payload.size();
    buffer_.erase(it);
    Apply(seq, b.digest, b.payload.data(), b.payload.size(), out);
  }
}

void StreamMachine::Tick(int64_t now_ns, Actions* out) {
  if (outstanding_ && now_ns >= deadline_ns_) Request(ReplayWhy::kRetry, now_ns, out);
  if (reachable_ && o_.unreachable_after_ns > 0 &&
      now_ns - last_heard_ns_ >= o_.unreachable_after_ns) {
    reachable_ = false;
    SetState(StreamState::kUnreachable, "no message from the engine", out);
  }
  if (!reachable_ && !dropped_unreachable_ && o_.drop_after_ns > 0 &&
      now_ns - last_heard_ns_ >= o_.drop_after_ns) {
    dropped_unreachable_ = true;
    if (p_.has_seq) {
      Resync(ResyncWhy::kUnreachable, out);
      ClearBuffer();
      // A request still out asked from the old position: replace it with one from 0.
      if (outstanding_) Request(ReplayWhy::kRetry, now_ns, out);
    }
  }
  if (!outstanding_ && started_ && o_.has_replay && o_.idle_probe_ns > 0 &&
      now_ns - last_live_ns_ >= o_.idle_probe_ns) {
    last_live_ns_ = now_ns;
    Request(ReplayWhy::kProbe, now_ns, out);
  }
}

}  // namespace kvidx::ingest
