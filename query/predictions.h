// Predicted residencies: what routers announce they sent to which pod, kept apart from the
// index (which only engines' events change) until the pod's engine confirms it or it expires.
//
// Contract
// - Announce() records the blocks of a prompt the pod does not hold yet, with a time to live.
//   The index is never written: a confirmed entry is never changed by an announcement.
// - A confirmer thread tails the workers' applied-event rings; when an announced pod stores
//   blocks, its announcements are re-read against the index: one the pod now holds whole is
//   confirmed (latency: the store's wall time minus the announcement's). At its expiry an
//   announcement is settled with the blocks the pod then holds (possibly none).
// - Precision = confirmed blocks / announced blocks, over settled announcements.
// - Bounded: at most max_blocks predicted blocks live (RESOURCE_EXHAUSTED past it, counted).
// - Thread-safe: lookups read under a shared lock; Announce and the confirmer write.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <shared_mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

#include "control/control_area.h"
#include "index/prefix_index.h"
#include "kvidx.pb.h"

namespace kvidx::query {

struct PredictionOptions {
  uint32_t ttl_ms = 5000;         // default time to live of an announcement
  uint64_t max_blocks = 1 << 20;  // predicted blocks live at once
};

class Predictions {
 public:
  Predictions(const index::PrefixIndex* index, const control::ControlArea* control,
              PredictionOptions options);
  ~Predictions();
  Predictions(const Predictions&) = delete;
  Predictions& operator=(const Predictions&) = delete;

  struct Announced {
    uint32_t already_held = 0;
    uint32_t predicted = 0;
  };
  // `keys` (the prompt's block keys) were sent to publisher `p`. ttl_ms 0: the default; capped
  // at 10 times it.
  absl::StatusOr<Announced> Announce(index::PublisherId p, std::vector<index::BlockKey> keys,
                                     uint32_t ttl_ms);
  // Leading blocks of keys[from..] announced to `p` and not expired.
  uint32_t Extend(index::PublisherId p, std::span<const index::BlockKey> keys, size_t from) const;
  // Publishers with a live prediction of `first`.
  std::vector<index::PublisherId> AnnouncedWith(index::BlockKey first) const;
  void Fill(v1::StatsResponse* s) const;

  // Settles what is due: the announcements of publishers in `stored` (they stored blocks at
  // stored_wall_ns), and every announcement expired at now_wall_ns. The confirmer calls it;
  // tests may too.
  void Settle(const std::map<index::PublisherId, int64_t>& stored, int64_t now_wall_ns);

 private:
  struct Announcement {
    index::PublisherId publisher;
    std::vector<index::BlockKey> keys;
    uint32_t held_at_announce;
    int64_t announced_ns, expires_ns;  // wall clock
  };
  struct BlockId {
    index::PublisherId p;
    index::BlockKey key;
    bool operator==(const BlockId&) const = default;
  };
  struct BlockIdHash {
    size_t operator()(const BlockId& b) const {
      return b.key ^ (uint64_t{b.p} * 0x9E3779B97F4A7C15ULL);
    }
  };
  uint32_t HeldBy(index::PublisherId p, std::span<const index::BlockKey> keys) const;
  // Caller holds mu_ exclusively.
  void Drop(uint64_t id, const Announcement& a);
  void Run();

  const index::PrefixIndex* index_;
  const control::ControlArea* control_;
  PredictionOptions options_;
  mutable std::shared_mutex mu_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Announcement> live_;                      // by id: oldest first
  std::unordered_map<BlockId, uint64_t, BlockIdHash> blocks_;  // -> the newest announcement
  std::unordered_map<index::PublisherId, uint32_t> live_by_publisher_;
  uint64_t live_blocks_ = 0;
  // Counters (under mu_).
  uint64_t announcements_ = 0, announced_blocks_ = 0, settled_blocks_ = 0, confirmed_blocks_ = 0;
  uint64_t confirmed_ = 0, expired_ = 0, refused_ = 0;
  std::deque<double> latencies_ms_;  // the last kLatencies confirmations
  static constexpr size_t kLatencies = 4096;
  std::atomic<bool> stop_{false};
  std::thread confirmer_;
};

}  // namespace kvidx::query
