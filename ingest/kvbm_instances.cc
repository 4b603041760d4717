#include "ingest/kvbm_instances.h"

#include <algorithm>

namespace kvidx::ingest {

InstanceTable::InstanceTable(uint32_t max_slots, int64_t idle_ns)
    : slots_(std::max<uint32_t>(max_slots, 1)), idle_ns_(idle_ns) {}

std::optional<InstanceTable::Route> InstanceTable::Take(InstanceId inst, int64_t now,
                                                        std::vector<uint32_t>* expired) {
  std::optional<uint32_t> mine;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (!s.used) continue;
    if (s.inst == inst) {
      mine = i;
    } else if (idle_ns_ > 0 && now - s.last_ns > idle_ns_) {
      s.used = false;
      if (expired != nullptr) expired->push_back(i);
    }
  }
  if (mine) {
    slots_[*mine].last_ns = now;
    return Route{*mine, false};
  }
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].used) {
      slots_[i] = Slot{true, inst, now};
      return Route{i, true};
    }
  }
  return std::nullopt;
}

void InstanceTable::Release(uint32_t slot) {
  if (slot < slots_.size()) slots_[slot].used = false;
}

void InstanceTable::Restore(uint32_t slot, InstanceId inst, int64_t now) {
  if (slot < slots_.size()) slots_[slot] = Slot{true, inst, now};
}

void InstanceTable::Clear() {
  for (Slot& s : slots_) s.used = false;
}

std::optional<InstanceId> InstanceTable::at(uint32_t slot) const {
  if (slot >= slots_.size() || !slots_[slot].used) return std::nullopt;
  return slots_[slot].inst;
}

uint32_t InstanceTable::live() const {
  return static_cast<uint32_t>(
      std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.used; }));
}

}  // namespace kvidx::ingest
