#include "control/control_area.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"

namespace kvidx::control {
namespace {

// The POSIX name of segment `name` (/dev/shm/<name>, as Boost.Interprocess names the index).
std::string ShmName(const std::string& name) { return "/" + name; }

std::string Errno() { return std::error_code(errno, std::generic_category()).message(); }

int64_t WallNow() { return std::chrono::system_clock::now().time_since_epoch().count(); }

// Waits up to 3 s for the creator of an area to size it and to mark it ready.
absl::Status WaitForCreator(int fd, const std::string& name) {
  struct stat st {};
  for (int i = 0; i < 300; ++i) {
    if (fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) >= sizeof(ControlHeader)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (static_cast<size_t>(st.st_size) != sizeof(ControlHeader)) {
    return absl::FailedPreconditionError(
        absl::StrCat("control area ", name, " has another layout (size ", st.st_size,
                     ", this build's ", sizeof(ControlHeader), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControlArea>> ControlArea::Open(const std::string& name, mode_t mode,
                                                               std::optional<ShmOwnership> owner,
                                                               bool create) {
  bool created = create;
  int fd = create ? shm_open(ShmName(name).c_str(), O_RDWR | O_CREAT | O_EXCL, mode) : -1;
  if (!create || (fd < 0 && errno == EEXIST)) {
    created = false;
    fd = shm_open(ShmName(name).c_str(), O_RDWR, 0);
    if (fd < 0 && errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("no control area named ", name));
    }
  }
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat("control area ", name, ": ", Errno()));
  }
  if (!created && owner) {
    absl::Status own = CheckShmOwnership(fd, absl::StrCat("control area /dev/shm/", name), *owner);
    if (!own.ok()) {
      close(fd);
      return own;
    }
  }
  if (created) {
    fchmod(fd, mode);  // umask may have narrowed it
    if (posix_fallocate(fd, 0, sizeof(ControlHeader)) != 0) {
      close(fd);
      return absl::ResourceExhaustedError("cannot reserve the control area");
    }
  } else if (absl::Status st = WaitForCreator(fd, name); !st.ok()) {
    close(fd);
    return st;
  }
  void* p = mmap(nullptr, sizeof(ControlHeader), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return absl::InternalError("mmap of the control area: " + Errno());
  auto* h = static_cast<ControlHeader*>(p);
  if (created) {
    h->magic = kControlMagic;
    h->version = kControlVersion;
    h->mu.Init();
    __atomic_store_n(&h->ready, 1u, __ATOMIC_RELEASE);
  } else {
    for (int i = 0; i < 300 && __atomic_load_n(&h->ready, __ATOMIC_ACQUIRE) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (h->magic != kControlMagic || h->version != kControlVersion) {
      munmap(p, sizeof(ControlHeader));
      return absl::FailedPreconditionError(absl::StrCat("control area ", name, ": layout version ",
                                                        h->version, ", this build's ",
                                                        kControlVersion));
    }
  }
  return std::unique_ptr<ControlArea>(new ControlArea(h));
}

bool ControlArea::Remove(const std::string& name) { return shm_unlink(ShmName(name).c_str()) == 0; }

ControlArea::~ControlArea() { munmap(h_, sizeof(ControlHeader)); }

absl::StatusOr<uint64_t> ControlArea::Post(const Command& c) {
  index::RobustLockGuard g(h_->mu);
  if (g.owner_died()) g.Repaired();  // slots are claimed by one store of `state`
  for (int i = 0; i < kCommandSlots; ++i) {
    Command& slot = h_->commands[i];
    uint32_t st = __atomic_load_n(&slot.state, __ATOMIC_ACQUIRE);
    // A finished command nobody collected for a minute is abandoned (its poster died or gave
    // up). A running one is not: its worker still writes into the slot.
    bool stale = st == static_cast<uint32_t>(CommandState::kDone) &&
                 WallNow() - slot.posted_wall_ns > 60'000'000'000LL;
    if (st != static_cast<uint32_t>(CommandState::kFree) && !stale) continue;
    const uint64_t id = ++h_->next_id;
    slot.id = id;
    slot.op = c.op;
    slot.worker = c.worker;
    slot.posted_wall_ns = WallNow();
    slot.args = c.args;
    slot.result = CommandResult{};
    __atomic_store_n(&slot.state, static_cast<uint32_t>(CommandState::kPending), __ATOMIC_RELEASE);
    return id;
  }
  return absl::ResourceExhaustedError("every control slot is busy");
}

absl::StatusOr<Answer> ControlArea::Await(uint64_t id, int timeout_ms) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    for (int i = 0; i < kCommandSlots; ++i) {
      Command& slot = h_->commands[i];
      if (__atomic_load_n(&slot.id, __ATOMIC_RELAXED) != id) continue;
      if (__atomic_load_n(&slot.state, __ATOMIC_ACQUIRE) !=
          static_cast<uint32_t>(CommandState::kDone)) {
        continue;
      }
      Answer a{slot, {}};
      a.payload.assign(h_->payloads[i], std::min(a.command.result.payload_size, kPayloadBytes));
      __atomic_store_n(&slot.state, static_cast<uint32_t>(CommandState::kFree), __ATOMIC_RELEASE);
      return a;
    }
    if (std::chrono::steady_clock::now() > until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  // Withdraw it if still pending so that a late worker does not act on it. A running command
  // finishes, and its slot is reclaimed once it is Done and uncollected.
  index::RobustLockGuard g(h_->mu);
  if (g.owner_died()) g.Repaired();
  for (int i = 0; i < kCommandSlots; ++i) {
    Command& slot = h_->commands[i];
    if (slot.id != id) continue;
    uint32_t pending = static_cast<uint32_t>(CommandState::kPending);
    __atomic_compare_exchange_n(&slot.state, &pending, static_cast<uint32_t>(CommandState::kFree),
                                false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  }
  return absl::DeadlineExceededError("no ingest worker took the command in time");
}

void ControlArea::Append(uint32_t worker, const RingEntry& e) {
  if (worker >= kMaxWorkers) return;
  EventRing& r = h_->rings[worker];
  uint64_t n = __atomic_load_n(&r.head, __ATOMIC_RELAXED);
  RingEntry& slot = r.entries[n & (kRingEntries - 1)];
  // Invalidate, fill, then publish the new sequence (release): a reader that sees seq n + 1
  // sees the whole entry.
  __atomic_store_n(&slot.seq, uint64_t{0}, __ATOMIC_RELAXED);
  std::atomic_thread_fence(std::memory_order_release);
  __atomic_store_n(&slot.wall_ns, e.wall_ns, __ATOMIC_RELAXED);
  __atomic_store_n(&slot.kind, e.kind, __ATOMIC_RELAXED);
  __atomic_store_n(&slot.publisher, e.publisher, __ATOMIC_RELAXED);
  __atomic_store_n(&slot.ns, e.ns, __ATOMIC_RELAXED);
  __atomic_store_n(&slot.blocks, e.blocks, __ATOMIC_RELAXED);
  __atomic_store_n(&slot.first_key, e.first_key, __ATOMIC_RELAXED);
  __atomic_store_n(&slot.seq, n + 1, __ATOMIC_RELEASE);
  __atomic_store_n(&r.head, n + 1, __ATOMIC_RELEASE);
}

RingReader::RingReader(const ControlArea& area, uint32_t worker)
    : ring_(&const_cast<ControlArea&>(area).header()->rings[worker % kMaxWorkers]),
      cursor_(__atomic_load_n(&ring_->head, __ATOMIC_ACQUIRE)) {}

bool RingReader::Read(uint64_t pos, RingEntry* out) const {
  const RingEntry& e = ring_->entries[pos & (kRingEntries - 1)];
  uint64_t seq = __atomic_load_n(&e.seq, __ATOMIC_ACQUIRE);
  out->seq = seq;
  out->wall_ns = __atomic_load_n(&e.wall_ns, __ATOMIC_RELAXED);
  out->kind = __atomic_load_n(&e.kind, __ATOMIC_RELAXED);
  out->publisher = __atomic_load_n(&e.publisher, __ATOMIC_RELAXED);
  out->ns = __atomic_load_n(&e.ns, __ATOMIC_RELAXED);
  out->blocks = __atomic_load_n(&e.blocks, __ATOMIC_RELAXED);
  out->first_key = __atomic_load_n(&e.first_key, __ATOMIC_RELAXED);
  // Acquire fence: the loads above complete before seq is loaded again.
  std::atomic_thread_fence(std::memory_order_acquire);
  return seq == pos + 1 && __atomic_load_n(&e.seq, __ATOMIC_RELAXED) == seq;
}

}  // namespace kvidx::control
