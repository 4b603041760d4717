// The control area: a small shared-memory segment beside the index through which the
// read-only query process hands admin commands to the ingest workers (the index keeps one kind
// of writer) and reads the workers' rings of applied events (for WatchEvents).
//
// Layout: a header, kCommandSlots command slots guarded by one robust mutex, and one
// single-producer event ring per worker (readers take no lock: each entry carries a sequence
// number written last with release order; a reader that sees it changed re-reads or skips).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "index/robust_mutex.h"

namespace kvidx::index {

inline constexpr uint64_t kControlMagic = 0x6b76696478435431ULL;  // "kvidxCT1"
inline constexpr uint32_t kControlVersion = 3;
inline constexpr int kCommandSlots = 64;
inline constexpr int kMaxWorkers = 16;
inline constexpr uint32_t kRingEntries = 8192;    // per worker, power of two
inline constexpr uint32_t kPayloadBytes = 16384;  // a command's text result

enum class CommandOp : uint32_t {
  kRegister = 1,
  kUnregister = 2,
  kClearPod = 3,  // every rank if dp_rank < 0
  kClearNamespace = 4,
  kClearAll = 5,
  kListSequences = 6,  // result: payload lines "id finished succeeded blocks request_id"
  kGetSequence = 7,    // result: that line, then one block key (hex) per line
};

// A slot's life: Free -> Pending (posted) -> Running (a worker claimed it) -> Done -> Free
// (collected). Only a Pending command can be withdrawn; a Running one belongs to its worker
// until Done, so a slot is never reused while a worker still writes its result.
enum class CommandState : uint32_t { kFree = 0, kPending = 1, kDone = 2, kRunning = 3 };

inline constexpr uint32_t kAnyWorker = 0xFFFFFFFFu;

struct Command {
  uint64_t id;
  uint32_t state;   // CommandState
  uint32_t op;      // CommandOp
  uint32_t worker;  // who must execute it (kAnyWorker: worker 0)
  int32_t dp_rank;
  int64_t posted_wall_ns;
  char pod[64];
  char model[120];
  char lora_name[64];
  char endpoint[128];
  char replay_endpoint[128];
  char topic[64];
  char dialect[24];
  uint64_t quota_pairs;
  int64_t sequence_id;
  // Result.
  int32_t code;  // absl::StatusCode
  uint32_t publishers;
  uint64_t pairs;
  uint64_t blocks;
  char message[256];
  uint32_t payload_size;
  uint32_t truncated;
};

struct RingEntry {
  uint64_t seq;  // 1-based position; written last (release)
  int64_t wall_ns;
  uint32_t kind;  // 1 stored, 2 removed, 3 cleared
  uint16_t publisher;
  uint16_t ns;
  uint32_t blocks;
  uint32_t reserved;
  uint64_t first_key;
};

struct EventRing {
  uint64_t head;  // entries written, ever (release)
  uint32_t pid;
  uint32_t reserved;
  RingEntry entries[kRingEntries];
};

struct ControlHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t ready;
  RobustMutex mu;
  uint64_t next_id;
  uint64_t lookups;  // counted by the query process
  uint64_t lookup_hits;
  Command commands[kCommandSlots];
  char payloads[kCommandSlots][kPayloadBytes];
  EventRing rings[kMaxWorkers];
};

// The control area's segment name beside index segment `segment` (the one rule for it).
inline std::string ControlName(const std::string& segment) { return segment + ".control"; }

class ControlArea {
 public:
  // Opens segment `name` read-write, creating it if missing. Any process of the service may
  // call it; the first initialises it.
  static absl::StatusOr<std::unique_ptr<ControlArea>> Open(const std::string& name,
                                                           mode_t mode = 0660);
  static bool Remove(const std::string& name);
  ~ControlArea();

  ControlHeader* header() { return h_; }

  // --- Query side ---
  // Posts a command; returns its id, or RESOURCE_EXHAUSTED if every slot is busy.
  absl::StatusOr<uint64_t> Post(const Command& c);
  // Waits up to timeout_ms for command `id`; copies its result and frees the slot.
  // DEADLINE_EXCEEDED if no worker took it in time.
  // `payload` (optional) receives the command's text result.
  absl::StatusOr<Command> Await(uint64_t id, int timeout_ms, std::string* payload = nullptr);

  // --- Worker side ---
  // Runs `fn` on every pending command this worker must execute and stores the result.
  template <typename F>
  void Serve(uint32_t worker, F&& fn);
  void Append(uint32_t worker, const RingEntry& e);

 private:
  explicit ControlArea(ControlHeader* h) : h_(h) {}
  ControlHeader* h_;
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
    c.payload_size = 0;
    c.truncated = 0;
    fn(c, h_->payloads[i]);  // fills code, counters, message, payload
    __atomic_store_n(&c.state, static_cast<uint32_t>(CommandState::kDone), __ATOMIC_RELEASE);
  }
}

}  // namespace kvidx::index
