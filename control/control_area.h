// The control area (control/layout.h): how the query process posts admin commands and reads the
// workers' applied events, and how a worker serves commands and appends events.
//
// Contract
// - Open() maps the area read-write, creating and initialising it if missing; any process of the
//   service may call it, concurrently. FAILED_PRECONDITION for an area of another layout.
// - Post/Await are the poster's side (the query process, kvidxctl through it); Serve/Append the
//   worker's. A command slot has one writer at a time (see the state machine in layout.h).
// - RingReader reads one worker's ring without a lock; an entry overwritten while it was read is
//   skipped and counted as missed, never returned torn.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

#include "control/layout.h"
#include "shared/shm_file.h"

namespace kvidx::control {

// The control area's segment name beside index segment `segment` (the one rule for it).
inline std::string ControlName(const std::string& segment) { return segment + ".control"; }

// Copies `s` into a NUL-padded field; false if it does not fit with its NUL.
template <size_t N>
bool CopyField(char (&dst)[N], std::string_view s) {
  if (s.size() >= N) return false;
  std::memcpy(dst, s.data(), s.size());
  std::memset(dst + s.size(), 0, N - s.size());
  return true;
}
template <size_t N>
std::string_view FieldView(const char (&src)[N]) {
  return {src, strnlen(src, N)};
}

// A command's result as the poster receives it: the slot's copy and its typed payload bytes.
struct Answer {
  Command command;
  std::string payload;
};

class ControlArea {
 public:
  // With `owner`, an existing area must have that owner and mode (shared/shm_file.h). With
  // `create` false (the query process: the ingest user creates the area) a missing area is
  // NOT_FOUND.
  static absl::StatusOr<std::unique_ptr<ControlArea>> Open(
      const std::string& name, mode_t mode = 0660, std::optional<ShmOwnership> owner = std::nullopt,
      bool create = true);
  static bool Remove(const std::string& name);
  ~ControlArea();
  ControlArea(const ControlArea&) = delete;
  ControlArea& operator=(const ControlArea&) = delete;

  ControlHeader* header() { return h_; }

  // --- Poster's side ---
  // Posts a command (op, worker and args of `c`); returns its id, or RESOURCE_EXHAUSTED if
  // every slot is busy.
  absl::StatusOr<uint64_t> Post(const Command& c);
  // Waits up to timeout_ms for command `id`, collects its answer and frees the slot.
  // DEADLINE_EXCEEDED (and the command withdrawn if no worker claimed it) on timeout.
  absl::StatusOr<Answer> Await(uint64_t id, int timeout_ms);

  // --- Worker's side ---
  // Runs fn(command, payload) on every pending command this worker must execute; fn fills
  // command.result and up to kPayloadBytes of payload.
  template <typename F>
  void Serve(uint32_t worker, F&& fn);
  void Append(uint32_t worker, const RingEntry& e);

 private:
  explicit ControlArea(ControlHeader* h) : h_(h) {}
  ControlHeader* h_;
};

// Reads one worker's ring from where it started (the head at construction): what is appended
// after it.
class RingReader {
 public:
  RingReader(const ControlArea& area, uint32_t worker);
  // Calls fn(entry, missed) for each entry appended since the last call, in order; `missed`
  // counts the entries lost (overwritten before they could be read) since the previous entry
  // delivered. fn returns false to stop; Poll then returns false.
  template <typename F>
  bool Poll(F&& fn);

 private:
  bool Read(uint64_t pos, RingEntry* out) const;
  const EventRing* ring_;
  uint64_t cursor_;
  uint64_t missed_ = 0;
};

template <typename F>
void ControlArea::Serve(uint32_t worker, F&& fn) {
  for (int i = 0; i < kCommandSlots; ++i) {
    Command& c = h_->commands[i];
    if (__atomic_load_n(&c.state, __ATOMIC_ACQUIRE) !=
        static_cast<uint32_t>(CommandState::kPending)) {
      continue;
    }
    uint32_t target = c.worker == kAnyWorker ? 0 : c.worker;
    if (target != worker) continue;
    // Claim it: a poster that gave up withdraws only a command still Pending.
    uint32_t pending = static_cast<uint32_t>(CommandState::kPending);
    if (!__atomic_compare_exchange_n(&c.state, &pending,
                                     static_cast<uint32_t>(CommandState::kRunning), false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      continue;
    }
    c.result = CommandResult{};
    fn(c, std::span<char>(h_->payloads[i], kPayloadBytes));
    __atomic_store_n(&c.state, static_cast<uint32_t>(CommandState::kDone), __ATOMIC_RELEASE);
  }
}

template <typename F>
bool RingReader::Poll(F&& fn) {
  uint64_t head = __atomic_load_n(&ring_->head, __ATOMIC_ACQUIRE);
  if (head - cursor_ > kRingEntries) {
    missed_ += head - cursor_ - kRingEntries;
    cursor_ = head - kRingEntries;
  }
  for (; cursor_ < head; ++cursor_) {
    RingEntry e;
    if (!Read(cursor_, &e)) {
      ++missed_;  // overwritten while we read it
      continue;
    }
    const uint64_t missed = missed_;
    missed_ = 0;
    if (!fn(e, missed)) {
      ++cursor_;
      return false;
    }
  }
  return true;
}

}  // namespace kvidx::control
