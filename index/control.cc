#include "index/control.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

#include <boost/interprocess/shared_memory_object.hpp>

namespace kvidx::index {
namespace bip = boost::interprocess;

absl::StatusOr<std::unique_ptr<ControlArea>> ControlArea::Open(const std::string& name,
                                                               mode_t mode) {
  int fd = -1;
  bool created = false;
  try {
    try {
      bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write,
                                    bip::permissions(static_cast<int>(mode)));
      fd = dup(shm.get_mapping_handle().handle);
      created = true;
    } catch (const bip::interprocess_exception& e) {
      if (e.get_error_code() != bip::already_exists_error) throw;
      bip::shared_memory_object shm(bip::open_only, name.c_str(), bip::read_write);
      fd = dup(shm.get_mapping_handle().handle);
    }
  } catch (const bip::interprocess_exception& e) {
    return absl::PermissionDeniedError(absl::StrCat("control area ", name, ": ", e.what()));
  }
  if (created) {
    fchmod(fd, mode);
    if (posix_fallocate(fd, 0, sizeof(ControlHeader)) != 0) {
      close(fd);
      return absl::ResourceExhaustedError("cannot reserve the control area");
    }
  } else {
    struct stat st {};
    for (int i = 0; i < 300; ++i) {
      fstat(fd, &st);
      if (static_cast<size_t>(st.st_size) >= sizeof(ControlHeader)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (static_cast<size_t>(st.st_size) != sizeof(ControlHeader)) {
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("control area ", name, " has another layout (size ", st.st_size, ")"));
    }
  }
  void* p = mmap(nullptr, sizeof(ControlHeader), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return absl::InternalError("mmap of the control area failed");
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
      return absl::FailedPreconditionError(absl::StrCat("control area ", name, ": wrong version"));
    }
  }
  return std::unique_ptr<ControlArea>(new ControlArea(h));
}

bool ControlArea::Remove(const std::string& name) {
  return bip::shared_memory_object::remove(name.c_str());
}

ControlArea::~ControlArea() { munmap(h_, sizeof(ControlHeader)); }

absl::StatusOr<uint64_t> ControlArea::Post(const Command& c) {
  RobustLockGuard g(h_->mu);
  if (g.owner_died()) g.Repaired();  // slots are claimed by one store of `state`
  for (int i = 0; i < kCommandSlots; ++i) {
    Command& slot = h_->commands[i];
    uint32_t st = __atomic_load_n(&slot.state, __ATOMIC_ACQUIRE);
    // A finished command nobody collected for a minute is abandoned (its poster died or gave
    // up). A running one is not: its worker still writes into the slot.
    bool stale = st == static_cast<uint32_t>(CommandState::kDone) &&
                 std::chrono::system_clock::now().time_since_epoch().count() - slot.posted_wall_ns >
                     60'000'000'000LL;
    if (st != static_cast<uint32_t>(CommandState::kFree) && !stale) continue;
    uint64_t id = ++h_->next_id;
    std::memcpy(static_cast<void*>(&slot), &c, sizeof(Command));
    slot.id = id;
    slot.posted_wall_ns = std::chrono::system_clock::now().time_since_epoch().count();
    slot.code = 0;
    slot.message[0] = '\0';
    __atomic_store_n(&slot.state, static_cast<uint32_t>(CommandState::kPending), __ATOMIC_RELEASE);
    return id;
  }
  return absl::ResourceExhaustedError("every control slot is busy");
}

absl::StatusOr<Command> ControlArea::Await(uint64_t id, int timeout_ms, std::string* payload) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    for (int i = 0; i < kCommandSlots; ++i) {
      Command& slot = h_->commands[i];
      if (__atomic_load_n(&slot.id, __ATOMIC_RELAXED) != id) continue;
      if (__atomic_load_n(&slot.state, __ATOMIC_ACQUIRE) ==
          static_cast<uint32_t>(CommandState::kDone)) {
        Command out;
        std::memcpy(static_cast<void*>(&out), &slot, sizeof(Command));
        if (payload != nullptr) {
          payload->assign(h_->payloads[i], std::min<uint32_t>(out.payload_size, kPayloadBytes));
        }
        __atomic_store_n(&slot.state, static_cast<uint32_t>(CommandState::kFree), __ATOMIC_RELEASE);
        return out;
      }
    }
    if (std::chrono::steady_clock::now() > until) {
      // Withdraw it if still pending so that a late worker does not act on it.
      RobustLockGuard g(h_->mu);
      if (g.owner_died()) g.Repaired();
      for (int i = 0; i < kCommandSlots; ++i) {
        Command& slot = h_->commands[i];
        if (slot.id != id) continue;
        uint32_t pending = static_cast<uint32_t>(CommandState::kPending);
        // Withdrawn only if no worker claimed it; a running command finishes, and its slot is
        // reclaimed once it is Done and uncollected.
        __atomic_compare_exchange_n(&slot.state, &pending,
                                    static_cast<uint32_t>(CommandState::kFree), false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
      }
      return absl::DeadlineExceededError("no ingest worker took the command in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
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

}  // namespace kvidx::index
