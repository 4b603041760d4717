// One publisher's ZeroMQ link: a SUB socket on its PUB endpoint (connected, or bound when the
// engine connects to us), a DEALER on its ROUTER replay endpoint, and a StreamMachine
// (ingest/stream_machine.h) that decides, from what the sockets bring, what is applied, what is
// asked for again and when the publisher's residencies are dropped. The link only feeds the
// machine and carries out its actions: decode and apply a batch (exactly once across worker
// crashes, with the segment's batch journal), drop residencies and bump the epoch, reset the
// DEALER, send a replay request. The machine's persisted state (last applied sequence and the
// digests of the last applied batches) lives in the publisher's slot, so a restarted worker
// checks continuity before it applies anything.
// A batch that does not decode is counted by reason and skipped (its sequence is consumed).
// Not thread-safe: driven by one worker thread.
#pragma once

#include <cstdint>
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
#include "ingest/kvbm_instances.h"
#include "ingest/stream_machine.h"

namespace kvidx::ingest {

struct LinkOptions {
  uint32_t reconnect_initial_ms = 1000;
  uint32_t reconnect_max_ms = 30000;
  uint32_t replay_timeout_ms = 2000;
  int32_t rcvhwm = 100000;
  uint32_t linger_ms = 0;  // ZMQ_LINGER of both sockets
  size_t max_buffered_batches = 100000;
  // KVBM instances one endpoint may carry (ingest/kvbm_instances.h); an instance silent for
  // drop_after_ms while others speak is taken for gone.
  uint32_t max_kvbm_instances = 4;
  // Byte budgets (config.h): the ZeroMQ receive queues hold at most queue_bytes (their
  // high-water mark is queue_bytes / limits.max_payload_bytes messages, each at most that
  // size), the live buffer during a replay at most replay_buffer_bytes.
  uint64_t queue_bytes = 512u << 20;
  uint64_t replay_buffer_bytes = 64u << 20;
  // Reported in the slot's budget_bytes with the two above (the applier enforces it).
  uint64_t sequence_table_bytes = 64u << 20;
  // After this long without a live batch, check continuity and ask for anything after the last
  // applied batch: a lost *last* batch shows no gap until the next one arrives, which may be
  // never, and a restarted engine may never publish again (0 disables).
  uint32_t idle_probe_ms = 1000;
  // No message from the engine for this long: reported unreachable; for drop_after_ms its
  // residencies are dropped (0: never).
  uint32_t unreachable_after_ms = 10000;
  uint32_t drop_after_ms = 300000;
  DecodeLimits limits;
};

inline constexpr uint64_t kReplayEndSeq = ~uint64_t{0};

// Drops publisher `id`'s residencies and stream state (epoch bumped): its next link starts with
// a replay from 0. Marked in the slot first, so a worker killed midway leaves its successor to
// finish it (PublisherLink::Start does).
void ResyncPublisher(index::PrefixIndex* index, Applier* applier, index::PublisherId id);

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
  bool replaying() const { return machine_ && machine_->replay_outstanding(); }
  const StreamMachine* machine() const { return machine_.get(); }
  // The live socket's endpoint as bound (bind mode with port "*": the port taken).
  std::string bound_endpoint() { return sub_ ? sub_->get(zmq::sockopt::last_endpoint) : ""; }

 private:
  void OnSub();
  void OnDealer();
  void OnMonitor();
  void HandleLive(std::vector<zmq::message_t>& parts);
  void ApplyBatch(std::optional<uint64_t> seq, uint64_t digest, std::span<const uint8_t> payload);
  void Carry(StreamMachine::Actions& actions);
  void SendReplayRequest(uint64_t from);
  absl::Status OpenDealer();
  void Resync(const char* why);
  void FinishResync();
  void MirrorCounters();
  index::PublisherIngestState* slot();  // this publisher's ingest part, nullptr if gone
  // KVBM instances (ingest/kvbm_routing.cc): the publisher of instance slot n (registering
  // "<pod>#<n>" when `create`), the route of a batch's instance (nullopt: refused, counted),
  // Shutdown, a dropped slot, a resync, a worker restart, and the stream mirrored to them.
  std::string InstancePod(uint32_t n) const;
  std::optional<index::PublisherId> InstancePublisher(uint32_t n, bool create);
  std::optional<index::PublisherId> RegisterInstance(uint32_t n);
  std::optional<index::PublisherId> RouteInstance(const std::pair<uint64_t, uint64_t>& inst);
  void ReleaseInstance(const std::pair<uint64_t, uint64_t>& inst);
  void DropInstance(uint32_t n, const char* why);
  void ForgetInstances();
  void RestoreInstances();
  void PublishInstanceCount();
  void MirrorToInstances();

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

  int reconnect_ivl_ms_ = 0;
  std::unique_ptr<StreamMachine> machine_;
  InstanceTable instances_;
  std::vector<std::optional<index::PublisherId>> instance_ids_;  // by slot, see kvbm_routing.cc
  uint64_t instance_ids_version_ = ~uint64_t{0};
  // The receive high-water mark of both sockets: rcvhwm, lowered so that a full queue of
  // maximal messages stays within queue_bytes.
  int QueueHwm() const;
  void CloseSockets();
  StreamCounters mirrored_;  // machine counters already added to the slot's
  int64_t last_state_log_ns_ = 0;
  uint32_t suppressed_logs_ = 0;
};

}  // namespace kvidx::ingest
