// Which publisher each KVBM instance of one endpoint writes to: a pure table (no sockets, no
// clocks, no index), driven by PublisherLink.
//
// One endpoint may carry events of several KVBM instances (a consolidated stream). Each gets
// a slot of its own, so alternating instance ids neither resync the endpoint nor mix their
// blocks: slot 0 is the configured publisher, slot n >= 1 a publisher named "<pod>#<n>". A new
// instance takes the lowest free slot; a full table refuses it (counted). An instance frees
// its slot by Shutdown, or by silence: one not heard for idle_ns while another instance of the
// endpoint was is taken for gone (a restart of the whole endpoint is the stream machine's to
// see; an endpoint that is quiet altogether expires nobody).
#pragma once

#include <compare>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include "index/layout.h"

namespace kvidx::ingest {

struct InstanceId {
  uint64_t hi = 0;
  uint64_t lo = 0;
  auto operator<=>(const InstanceId&) const = default;
};

// Whether `name` is the publisher of a further KVBM instance of pod `pod` ("<pod>#<n>").
inline bool IsInstancePod(std::string_view name, std::string_view pod) {
  if (name.size() <= pod.size() + 1 || !name.starts_with(pod) || name[pod.size()] != '#')
    return false;
  for (char c : name.substr(pod.size() + 1)) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// The instance number n if publisher slot `s` is a further KVBM instance of pod `pod`
// ("<pod>#<n>", with no endpoint of its own), else nullopt.
inline std::optional<uint32_t> InstanceNumberOf(const index::PublisherSlot& s,
                                                std::string_view pod) {
  const std::string_view name(s.id.pod, strnlen(s.id.pod, sizeof(s.id.pod)));
  if (s.id.endpoint[0] != '\0' || !IsInstancePod(name, pod)) return std::nullopt;
  uint64_t n = 0;
  for (char c : name.substr(pod.size() + 1)) {
    n = n * 10 + static_cast<uint64_t>(c - '0');
    if (n > UINT32_MAX) return std::nullopt;
  }
  return static_cast<uint32_t>(n);
}

class InstanceTable {
 public:
  // max_slots >= 1; idle_ns 0: silence never frees a slot.
  InstanceTable(uint32_t max_slots, int64_t idle_ns);

  struct Route {
    uint32_t slot;
    bool fresh;  // the slot was free: its publisher holds nothing of this instance yet
  };
  // The slot of `inst`'s events at `now`, nullopt if the table is full. Slots of other
  // instances silent for idle_ns are freed first and appended to `expired`.
  std::optional<Route> Take(InstanceId inst, int64_t now, std::vector<uint32_t>* expired);
  // The slot's instance is gone (Shutdown).
  void Release(uint32_t slot);
  // Puts back what a previous worker recorded (heard at `now`).
  void Restore(uint32_t slot, InstanceId inst, int64_t now);
  // Forgets every instance (the endpoint was resynced).
  void Clear();

  std::optional<InstanceId> at(uint32_t slot) const;
  uint32_t live() const;
  uint32_t max_slots() const { return static_cast<uint32_t>(slots_.size()); }

 private:
  struct Slot {
    bool used = false;
    InstanceId inst;
    int64_t last_ns = 0;
  };
  std::vector<Slot> slots_;
  int64_t idle_ns_;
};

}  // namespace kvidx::ingest
