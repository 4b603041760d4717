// The sequence and replay logic of one publisher's stream (wire.md §2), as a pure state
// machine: no sockets, no clocks, no index. The publisher link feeds it events (a live batch, a
// replay batch, a replay's end marker, connected/disconnected, a timer tick with the time) and
// carries out the actions it returns, in order (apply a batch, drop the publisher's residencies,
// reset the replay socket, send a replay request). Everything it needs to survive a worker
// restart is in `Persisted`, which the link keeps in the segment.
//
// Rules:
// - Nothing live is applied before a replay has covered the start of the stream: on first
//   contact the replay from 0, otherwise the *continuity check* — a replay from the last applied
//   sequence itself, whose first batch must carry the digest recorded when that sequence was
//   applied. The check runs on start (worker start or restart), on every (re)connect of the live
//   socket, on an endpoint change, and as the idle probe.
//     equal digest                  -> the same engine: apply what follows;
//     other digest, or the engine
//     has nothing that high         -> the engine restarted: drop, new epoch, replay from 0;
//     the engine's first batch is
//     past the last applied one     -> an unverifiable gap (see below).
// - One replay request outstanding at a time. On its deadline the replay socket is reset (so no
//   stale reply can be taken for a later request) and the request sent again.
// - While a replay runs, live batches are buffered (bounded; past the bound they are dropped and
//   asked for again). A hole among buffered batches is asked for again, never a resync.
// - A live batch at or below the last applied sequence is a duplicate if its digest equals the
//   one recorded for that sequence. A different digest, or a sequence older than the recorded
//   ones, is a new engine or a late batch of the old one: the continuity check decides (the
//   engine is the authority; a late batch never drops anything by itself).
// - Unverifiable gap policy: the engine no longer holds batches kvidx never applied, so what
//   they stored and removed is unknown. kvidx drops the publisher's residencies (a router is never
//   told a block is held on a guess), counts the gap, and rebuilds from the oldest batch the
//   engine still has. This under-reports the pod's older blocks until they are stored again;
//   the alternative — keeping entries whose removals may have been lost — over-reports, which
//   sends requests to pods that miss.
// - A publisher without a replay endpoint cannot be checked: its live stream is taken as it
//   comes and any gap or backwards step drops its residencies.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "wire/vocabulary.h"

namespace kvidx::ingest {

// Recent applied (sequence, payload digest) pairs, kept in the segment.
inline constexpr int kDigestRing = 16;

struct StreamPersisted {
  bool has_seq = false;
  uint64_t last_seq = 0;
  struct Entry {
    uint64_t seq = 0;
    uint64_t digest = 0;
    bool valid = false;
  };
  std::array<Entry, kDigestRing> ring{};
  // The digest recorded for `seq`, if it is still in the ring.
  bool Find(uint64_t seq, uint64_t* digest) const;
  void Record(uint64_t seq, uint64_t digest);
  void Reset();
};

struct StreamOptions {
  bool has_replay = true;
  int64_t replay_timeout_ns = 2'000'000'000;
  int64_t idle_probe_ns = 1'000'000'000;  // 0: no idle probe
  size_t max_buffered = 100000;
  // Payload bytes the live buffer may hold during a replay (the byte budget); a batch past
  // either bound is dropped, counted in buffer_overflows, and asked for again as a hole.
  size_t max_buffered_bytes = 64u << 20;
  // Freshness: no message from the engine for this long marks it unreachable; for
  // drop_after_ns its residencies are dropped (0: never).
  int64_t unreachable_after_ns = 10'000'000'000;
  int64_t drop_after_ns = 300'000'000'000;
};

using wire::StreamState;
using wire::StreamStateName;

// Why a replay was asked for (counted apart: an idle probe is neither a gap nor a replay).
enum class ReplayWhy : uint8_t { kStart, kReconnect, kGap, kProbe, kRetry, kRestart };
const char* ReplayWhyName(ReplayWhy w);

enum class ResyncWhy : uint8_t {
  kRestart,       // the engine restarted: digest mismatch or nothing at the last sequence
  kUnverifiable,  // the engine no longer has batches that were never applied
  kUnreachable,   // unreachable longer than drop_after
  kNoReplay,      // a gap on a publisher without a replay endpoint
};
const char* ResyncWhyName(ResyncWhy w);

struct StreamAction {
  enum Kind : uint8_t {
    kApply,          // apply `payload` as batch `seq`
    kResync,         // drop the publisher's residencies and bump its epoch (`resync`)
    kResetReplay,    // close and reopen the replay socket
    kRequestReplay,  // send a replay request from `seq` (`why`)
    kState,          // the state changed to `state` (`reason` says why)
  } kind;
  uint64_t seq = 0;
  std::vector<uint8_t> payload;
  ReplayWhy why = ReplayWhy::kStart;
  ResyncWhy resync = ResyncWhy::kRestart;
  StreamState state = StreamState::kStarting;
  const char* reason = "";
};

struct StreamCounters {
  uint64_t live = 0;              // live batches received
  uint64_t gaps = 0;              // holes in the live stream
  uint64_t replays = 0;           // replay requests, probes excluded
  uint64_t probes = 0;            // idle probes
  uint64_t retries = 0;           // requests sent again after a deadline
  uint64_t duplicates = 0;        // batches seen again with the recorded digest
  uint64_t restarts = 0;          // engine restarts detected
  uint64_t unverifiable = 0;      // unverifiable gaps (incl. a first contact past seq 0)
  uint64_t resyncs = 0;           // residencies dropped
  uint64_t buffer_overflows = 0;  // live batches dropped from a full buffer
  uint64_t stale_replay = 0;      // replay frames with no request outstanding
  uint64_t suspect = 0;           // live batches that contradict the record: rechecked
  uint64_t stale_live = 0;        // buffered batches a complete reply proved foreign
};

class StreamMachine {
 public:
  using Actions = std::vector<StreamAction>;

  StreamMachine(StreamOptions options, StreamPersisted persisted);

  // The worker (re)started, or the link's endpoints changed: check continuity.
  void Start(int64_t now_ns, Actions* out);
  void EndpointChanged(int64_t now_ns, Actions* out);
  // The live socket connected (again) / lost its peer.
  void Connected(int64_t now_ns, Actions* out);
  void Disconnected(int64_t now_ns, Actions* out);
  void Live(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size, int64_t now_ns,
            Actions* out);
  void ReplayBatch(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size, int64_t now_ns,
                   Actions* out);
  void ReplayEnd(int64_t now_ns, Actions* out);
  // A replay request could not be sent (the socket refused it): retried on the deadline.
  void Tick(int64_t now_ns, Actions* out);

  const StreamPersisted& persisted() const { return p_; }
  const StreamCounters& counters() const { return c_; }
  StreamState state() const { return state_; }
  bool replay_outstanding() const { return outstanding_; }
  bool reachable() const { return reachable_; }
  size_t buffered() const { return buffer_.size(); }
  size_t buffered_bytes() const { return buffered_bytes_; }

 private:
  struct Buffered {
    uint64_t digest;
    std::vector<uint8_t> payload;
    uint64_t serial;  // requests sent before it arrived
  };
  void Request(ReplayWhy why, int64_t now_ns, Actions* out);
  void Apply(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size, Actions* out);
  void Resync(ResyncWhy why, Actions* out);
  void SetState(StreamState s, const char* reason, Actions* out);
  void Heard(int64_t now_ns, Actions* out);
  // Applies buffered batches that now follow the stream; asks for a replay if a hole is left.
  // After a complete reply (`after_reply`), a batch that arrived before that request was sent
  // and lies past the reply's highest sequence cannot be the engine's (the engine had published
  // it before it answered, so the reply would hold it): it is a late batch of an earlier
  // process and is dropped.
  void Drain(int64_t now_ns, bool after_reply, Actions* out);
  // A batch at or below the last applied sequence, from the live socket or a replay.
  // Returns false if it revealed a restart (handled).
  bool Old(uint64_t seq, uint64_t digest, bool from_replay, int64_t now_ns, Actions* out);
  void RestartDetected(int64_t now_ns, Actions* out);
  void Buffer(uint64_t seq, uint64_t digest, const uint8_t* data, size_t size, int64_t now_ns,
              Actions* out);

  StreamOptions o_;
  StreamPersisted p_;
  StreamCounters c_;
  StreamState state_ = StreamState::kStarting;
  bool started_ = false;  // a first replay completed since start
  bool outstanding_ = false;
  bool first_reply_ = true;  // the next replay batch is the first of its reply
  bool skip_reply_ = false;  // ignore the rest of this reply (until its end or a reset)
  bool reachable_ = true;
  bool dropped_unreachable_ = false;
  uint64_t request_from_ = 0;
  uint64_t serial_ = 0;     // requests sent (the outstanding one is number serial_)
  bool reply_any_ = false;  // the current reply has brought a batch; reply_max_ is its highest
  uint64_t reply_max_ = 0;
  int64_t deadline_ns_ = 0;
  int64_t last_heard_ns_ = 0;
  int64_t last_live_ns_ = 0;
  std::map<uint64_t, Buffered> buffer_;
  size_t buffered_bytes_ = 0;  // payload bytes in buffer_
  // Replies in a row with a hole at hole_at_ (ReplayBatch).
  static constexpr uint32_t kHoleReplies = 3;
  uint64_t hole_at_ = 0;
  uint32_t hole_replies_ = 0;
  void ClearBuffer() {
    buffer_.clear();
    buffered_bytes_ = 0;
  }
  std::map<uint64_t, Buffered>::iterator Unbuffer(std::map<uint64_t, Buffered>::iterator it) {
    buffered_bytes_ -= it->second.payload.size();
    return buffer_.erase(it);
  }
};

}  // namespace kvidx::ingest
