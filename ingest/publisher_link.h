// One publisher's ZeroMQ link: a SUB socket on its PUB endpoint (connected, or bound when the
// engine connects to us), a DEALER on its ROUTER replay endpoint, and the sequence logic that
// makes the applied stream whole (wire.md §2).
//
// Sequence rules, per publisher (state in its PublisherSlot, so a restarted worker resumes):
// - the next live batch must be last_seq + 1; a batch that jumps ahead is a gap: live batches
//   are buffered while a replay from last_seq + 1 runs over the DEALER; the replayed batches
//   and then the buffered ones are applied in order, each once;
// - a replay that starts later than asked, has holes, or misses its deadline (the ROUTER drops
//   past its high-water mark, END included) cannot make the stream whole: the publisher's
//   residencies are dropped, its epoch bumped, and it resyncs from what the engine still has;
// - a sequence that goes backwards is an engine restart: resync likewise;
// - a batch that does not decode is counted by reason and skipped (its sequence is consumed).
// Not thread-safe: driven by one worker thread.
#ifndef KVIDX_INGEST_PUBLISHER_LINK_H
#define KVIDX_INGEST_PUBLISHER_LINK_H

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "index/prefix_index.h"
#include "ingest/applier.h"
#include "ingest/config.h"
#include "ingest/decoder.h"

namespace kvidx::ingest {

struct LinkOptions {
  uint32_t reconnect_initial_ms = 1000;
  uint32_t reconnect_max_ms = 30000;
  uint32_t replay_timeout_ms = 2000;
  int32_t rcvhwm = 100000;
  size_t max_buffered_batches = 100000;
  // After this long without a live batch, ask the replay endpoint for anything after the last
  // applied batch: a lost *last* batch shows no gap until the next one arrives, which may be
  // never (0 disables).
  uint32_t idle_probe_ms = 1000;
  DecodeLimits limits;
};

inline constexpr uint64_t kReplayEndSeq = ~uint64_t{0};

class PublisherLink {
 public:
  PublisherLink(zmq::context_t& ctx, index::PrefixIndex* index, Applier* applier,
                index::PublisherId id, PublisherConfig config, LinkOptions options);
  ~PublisherLink();

  // Creates and connects (or binds) the sockets and resumes from the segment's sequence.
  absl::Status Start();

  // Poll integration: Items() appends this link's sockets; Handle() takes the same entries back.
  void AppendPollItems(std::vector<zmq::pollitem_t>* items);
  void Handle(const zmq::pollitem_t* items);
  size_t poll_item_count() const { return dealer_ ? 3 : 2; }
  // Timers: replay deadlines.
  void Tick(int64_t now_ns);

  index::PublisherId id() const { return id_; }
  const PublisherConfig& config() const { return config_; }
  bool replaying() const { return replaying_; }

 private:
  void OnSub();
  void OnDealer();
  void OnMonitor();
  void HandleLive(std::vector<zmq::message_t>& parts);
  void HandleSequenced(uint64_t seq, std::span<const uint8_t> payload, bool from_replay);
  void ApplyBatch(std::optional<uint64_t> seq, std::span<const uint8_t> payload);
  bool StartReplay(uint64_t from, bool first_contact);
  void FinishReplay(bool got_end);
  void Resync(const char* why);
  index::PublisherSlot* slot();
  std::optional<uint64_t> Expected();

  zmq::context_t& ctx_;
  index::PrefixIndex* index_;
  Applier* applier_;
  index::PublisherId id_;
  PublisherConfig config_;
  LinkOptions options_;
  std::unique_ptr<zmq::socket_t> sub_;
  std::unique_ptr<zmq::socket_t> dealer_;
  std::unique_ptr<zmq::socket_t> monitor_;
  std::string monitor_endpoint_;

  bool replaying_ = false;
  bool replay_first_ = false;
  bool first_contact_ = false;
  uint64_t replay_from_ = 0;
  int64_t replay_deadline_ns_ = 0;
  int64_t last_activity_ns_ = 0;
  std::deque<std::pair<uint64_t, std::vector<uint8_t>>> buffered_;
};

}  // namespace kvidx::ingest

#endif  // KVIDX_INGEST_PUBLISHER_LINK_H
