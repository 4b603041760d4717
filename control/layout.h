// The shared-memory layout of the control area: the admin command slots and the workers'
// applied-event rings. Plain structs at fixed offsets, like the index segment (index/layout.h).
//
// Implementation notes
// --------------------
// The control area is a small segment beside the index (ControlName(segment)). The read-only
// query process writes here, never in the index: it posts admin commands that the owning ingest
// worker executes, and it reads what the workers applied (WatchEvents).
//
//   +-----------------------------+ 0
//   | ControlHeader               |  magic, version, ready, slot lock, next id, lookup counters
//   |   Command[kCommandSlots]    |  op + typed arguments + typed result, one per slot
//   |   payloads[kCommandSlots]   |  kPayloadBytes of typed records per slot (sequence answers)
//   |   EventRing[kMaxWorkers]    |  head | RingEntry[kRingEntries]: one producer each
//   +-----------------------------+ sizeof(ControlHeader)
//
// Commands: a slot goes Free -> Pending (posted, under `mu`) -> Running (claimed by its worker
// with a compare-and-swap) -> Done (result written, release) -> Free (collected). Only a Pending
// command can be withdrawn; a Running one belongs to its worker until Done, so a slot is never
// reused while a worker still writes its result. A Done slot left uncollected for a minute is
// reclaimed by the next Post.
//
// Rings: the worker invalidates an entry (seq 0), fills it, then release-stores its 1-based
// position in `seq` and in the ring's `head`. A reader acquires `head`, reads an entry, and
// keeps it only if `seq` is its position before and after the read (RingReader).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "index/robust_mutex.h"

namespace kvidx::control {

inline constexpr uint64_t kControlMagic = 0x6b76696478435431ULL;  // "kvidxCT1"
inline constexpr uint32_t kControlVersion = 6;
inline constexpr int kCommandSlots = 64;
inline constexpr int kMaxWorkers = 16;
inline constexpr uint32_t kRingEntries = 8192;    // per worker, power of two
inline constexpr uint32_t kPayloadBytes = 16384;  // a command's typed result records

enum class CommandOp : uint32_t {
  kRegister = 1,
  kUnregister = 2,
  kClearPod = 3,  // every rank if dp_rank < 0
  kClearNamespace = 4,
  kClearAll = 5,
  kListSequences = 6,  // payload: SequenceRecord[]
  kGetSequence = 7,    // payload: one SequenceRecord, then uint64_t block keys
};

enum class CommandState : uint32_t { kFree = 0, kPending = 1, kDone = 2, kRunning = 3 };

inline constexpr uint32_t kAnyWorker = 0xFFFFFFFFu;

// What a command names. Strings are NUL-padded; Post() refuses none, callers copy with
// CopyField() (which refuses what does not fit).
struct CommandArgs {
  int32_t dp_rank;
  uint32_t publisher_flags;  // index::PublisherFlags of a kRegister
  uint64_t quota_pairs;
  int64_t sequence_id;
  char pod[64];
  char model[120];
  char lora_name[64];
  char endpoint[128];
  char replay_endpoint[128];
  char topic[64];
  char dialect[24];
};

// What the worker answers.
struct CommandResult {
  int32_t code;  // absl::StatusCode
  uint32_t publishers;
  uint64_t pairs;
  uint64_t blocks;
  uint32_t payload_size;  // bytes of typed records in the slot's payload
  uint32_t truncated;     // the records did not all fit
  char message[256];
  char reason[32];  // a refusal's reason (query/errors.h), e.g. UNKNOWN_SEQUENCE
};

struct Command {
  uint64_t id;
  uint32_t state;   // CommandState
  uint32_t op;      // CommandOp
  uint32_t worker;  // who must execute it (kAnyWorker: worker 0)
  uint32_t reserved;
  int64_t posted_wall_ns;
  CommandArgs args;
  CommandResult result;
};

// One sequence of a sequence-id publisher (ListSequences / GetSequence answers).
struct SequenceRecord {
  int64_t sequence_id;
  uint32_t finished;
  uint32_t succeeded;
  uint32_t stored_blocks;
  uint32_t request_id_size;  // bytes of request_id used (not NUL-terminated)
  char request_id[232];
};

// What a worker applied, as WatchEvents reports it. The values are the proto's
// AppliedEvent.Kind (query static_asserts it).
enum class AppliedKind : uint32_t { kStored = 1, kRemoved = 2, kCleared = 3 };

struct RingEntry {
  uint64_t seq;  // 1-based position; written last (release)
  int64_t wall_ns;
  uint32_t kind;  // AppliedKind
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
  index::RobustMutex mu;  // serialises Post's slot search; never held by a worker
  uint64_t next_id;
  uint64_t lookups;  // counted by the query process
  uint64_t lookup_hits;
  Command commands[kCommandSlots];
  char payloads[kCommandSlots][kPayloadBytes];
  EventRing rings[kMaxWorkers];
};

static_assert(std::is_standard_layout_v<ControlHeader>);
static_assert(std::is_trivially_copyable_v<Command>);
static_assert(sizeof(RingEntry) == 40);
static_assert(sizeof(SequenceRecord) == 256);
static_assert(kPayloadBytes % sizeof(SequenceRecord) == 0);
static_assert((kRingEntries & (kRingEntries - 1)) == 0, "ring size is a power of two");
static_assert(offsetof(ControlHeader, commands) % 8 == 0);

}  // namespace kvidx::control
