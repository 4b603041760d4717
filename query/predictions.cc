#include "query/predictions.h"

#include <algorithm>
#include <chrono>
#include <mutex>

#include "absl/strings/str_cat.h"

#include "shared/clock.h"

namespace kvidx::query {

Predictions::Predictions(const index::PrefixIndex* index, const control::ControlArea* control,
                         PredictionOptions options)
    : index_(index), control_(control), options_(options) {
  confirmer_ = std::thread([this] { Run(); });
}

Predictions::~Predictions() {
  stop_ = true;
  confirmer_.join();
}

uint32_t Predictions::HeldBy(index::PublisherId p, std::span<const index::BlockKey> keys) const {
  index::LookupOptions o;
  const index::PublisherId only[] = {p};
  o.candidates = only;
  index::LookupResult r = index_->Lookup(keys, o);
  return r.matches.empty() ? 0 : r.matches[0].blocks;
}

absl::StatusOr<Predictions::Announced> Predictions::Announce(index::PublisherId p,
                                                             std::vector<index::BlockKey> keys,
                                                             uint32_t ttl_ms) {
  Announced out;
  out.already_held = HeldBy(p, keys);
  const uint32_t predicted = static_cast<uint32_t>(keys.size()) - out.already_held;
  if (predicted == 0) return out;  // nothing to predict: the pod holds it all
  const uint32_t ttl = ttl_ms == 0 ? options_.ttl_ms : std::min(ttl_ms, 10 * options_.ttl_ms);
  std::unique_lock lock(mu_);
  if (live_blocks_ + predicted > options_.max_blocks) {
    ++refused_;
    return absl::ResourceExhaustedError(
        absl::StrCat("PREDICTIONS_FULL: ", live_blocks_, " predicted blocks live; the limit is ",
                     options_.max_blocks, " ([query] max_predicted_blocks)"));
  }
  const uint64_t id = next_id_++;
  const int64_t now = WallNanos();
  for (size_t i = out.already_held; i < keys.size(); ++i) blocks_[BlockId{p, keys[i]}] = id;
  live_.emplace(
      id, Announcement{p, std::move(keys), out.already_held, now, now + int64_t{ttl} * 1'000'000});
  ++live_by_publisher_[p];
  live_blocks_ += predicted;
  ++announcements_;
  announced_blocks_ += predicted;
  out.predicted = predicted;
  return out;
}

uint32_t Predictions::Extend(index::PublisherId p, std::span<const index::BlockKey> keys,
                             size_t from) const {
  std::shared_lock lock(mu_);
  if (live_by_publisher_.count(p) == 0) return 0;
  const int64_t now = WallNanos();
  uint32_t n = 0;
  for (size_t i = from; i < keys.size(); ++i, ++n) {
    auto it = blocks_.find(BlockId{p, keys[i]});
    if (it == blocks_.end()) break;
    auto a = live_.find(it->second);
    if (a == live_.end() || a->second.expires_ns <= now) break;
  }
  return n;
}

std::vector<index::PublisherId> Predictions::AnnouncedWith(index::BlockKey first) const {
  std::shared_lock lock(mu_);
  std::vector<index::PublisherId> out;
  for (const auto& [p, n] : live_by_publisher_) {
    if (blocks_.count(BlockId{p, first}) != 0) out.push_back(p);
  }
  return out;
}

void Predictions::Drop(uint64_t id, const Announcement& a) {
  for (size_t i = a.held_at_announce; i < a.keys.size(); ++i) {
    auto it = blocks_.find(BlockId{a.publisher, a.keys[i]});
    if (it != blocks_.end() && it->second == id) blocks_.erase(it);
  }
  if (--live_by_publisher_[a.publisher] == 0) live_by_publisher_.erase(a.publisher);
  live_blocks_ -= a.keys.size() - a.held_at_announce;
  settled_blocks_ += a.keys.size() - a.held_at_announce;
}

void Predictions::Settle(const std::map<index::PublisherId, int64_t>& stored, int64_t now_wall_ns) {
  std::unique_lock lock(mu_);
  for (auto it = live_.begin(); it != live_.end();) {
    const Announcement& a = it->second;
    auto s = stored.find(a.publisher);
    const bool expired = a.expires_ns <= now_wall_ns;
    if (s == stored.end() && !expired) {
      ++it;
      continue;
    }
    const uint32_t held = HeldBy(a.publisher, a.keys);
    if (held == a.keys.size() && s != stored.end()) {
      ++confirmed_;
      confirmed_blocks_ += a.keys.size() - a.held_at_announce;
      latencies_ms_.push_back(
          static_cast<double>(std::max<int64_t>(0, s->second - a.announced_ns)) / 1e6);
      if (latencies_ms_.size() > kLatencies) latencies_ms_.pop_front();
    } else if (expired) {
      ++expired_;
      confirmed_blocks_ += held > a.held_at_announce ? held - a.held_at_announce : 0;
    } else {
      ++it;  // stored something else; still waiting
      continue;
    }
    Drop(it->first, a);
    it = live_.erase(it);
  }
}

void Predictions::Fill(v1::StatsResponse* s) const {
  std::shared_lock lock(mu_);
  s->set_announcements(announcements_);
  s->set_announced_blocks(announced_blocks_);
  s->set_confirmed_blocks(confirmed_blocks_);
  s->set_prediction_precision(settled_blocks_ == 0 ? 0.0
                                                   : static_cast<double>(confirmed_blocks_) /
                                                         static_cast<double>(settled_blocks_));
  s->set_predictions_confirmed(confirmed_);
  s->set_predictions_expired(expired_);
  s->set_predictions_refused(refused_);
  s->set_predicted_blocks_live(live_blocks_);
  if (!latencies_ms_.empty()) {
    std::vector<double> v(latencies_ms_.begin(), latencies_ms_.end());
    std::sort(v.begin(), v.end());
    auto at = [&](double q) {
      return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
    };
    s->set_confirm_latency_p50_ms(at(0.50));
    s->set_confirm_latency_p99_ms(at(0.99));
  }
}

void Predictions::Run() {
  std::vector<control::RingReader> rings;
  for (uint32_t w = 0; w < control::kMaxWorkers; ++w) rings.emplace_back(*control_, w);
  int64_t next_sweep = 0;
  while (!stop_) {
    std::map<index::PublisherId, int64_t> stored;
    bool any = false;
    {
      std::shared_lock lock(mu_);
      any = !live_.empty();
    }
    for (control::RingReader& ring : rings) {
      ring.Poll([&](const control::RingEntry& e, uint64_t) {
        if (e.kind == static_cast<uint32_t>(control::AppliedKind::kStored)) {
          int64_t& at = stored[static_cast<index::PublisherId>(e.publisher)];
          at = std::max<int64_t>(at, e.wall_ns);
        }
        return true;
      });
    }
    const int64_t now = WallNanos();
    if (any && (!stored.empty() || now >= next_sweep)) {
      Settle(stored, now);
      next_sweep = now + 10'000'000;  // expiries are settled within 10 ms
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace kvidx::query
