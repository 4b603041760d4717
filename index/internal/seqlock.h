// The stripe seqlock: how a writer holds a stripe, and how a reader reads one without a lock.
//
// Contract
// - A writer holds a stripe (block or engine) through a StripeWriteGuard: the stripe's robust
//   mutex, its own pid in `owner_pid`, and an odd `version` for the guard's lifetime. If the
//   previous holder died, the guard runs the stripe's repair before returning. ok() is false
//   when the lock is unrecoverable; the writer must then leave the stripe alone.
// - A reader calls OptimisticRead(header, read, &validated). `read()` runs until it ran wholly
//   inside one even version. It must be restartable and bounded: it resets its outputs on
//   entry, loads shared fields with Ld() only, and checks every index before following it.
//   When the writer's process is gone, or the wait exceeds kMaxReaderWaitNs, the last attempt
//   is returned as is and `validated` is false (a best-effort read of a stalled stripe).
// - Ordering: the writer's release stores pair with the reader's acquire loads and fence, so a
//   reader that sees an even, unchanged version saw no store of a write in progress. Under
//   ThreadSanitizer the fences are replaced by acquire/release data accesses (SeqlockFence,
//   KVIDX_TSAN in index/layout.h), which TSan checks.
//
// Header is StripeHeader or EngineStripeHeader: anything with `mu`, `version` and
// `owner_pid`.
#pragma once

#include <atomic>
#include <cstdint>

#include "index/layout.h"
#include "index/stripe_write_hook.h"

namespace kvidx::index::internal {

// A reader gives up validating after this long and reads best-effort instead: a writer that is
// merely descheduled finishes well within it; one that died never will.
inline constexpr int64_t kMaxReaderWaitNs = 2'000'000;

// This process's pid, cached (getpid() is a system call in glibc 2.36 and writers record it on
// every lock); refreshed in a forked child.
int32_t CachedPid();

// Keeps the compiler from moving stores across a point that crash recovery relies on (a journal
// is complete before the stripe changes). The hardware keeps a thread's own stores in order for
// anyone who looks after that thread is dead.
inline void CompilerBarrier() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// The seqlock's fences; none under ThreadSanitizer, where Ld/St carry the ordering instead
// (index/layout.h, KVIDX_TSAN).
inline void SeqlockFence([[maybe_unused]] std::memory_order order) {
#ifndef KVIDX_TSAN
  std::atomic_thread_fence(order);
#endif
}

// Waits for a stripe's writer. Wait() returns true when the reader should stop validating: the
// writer is dead, or the wait exceeded kMaxReaderWaitNs.
class ReadWait {
 public:
  bool Wait(const int32_t& owner_pid);

 private:
  int spins_ = 0;
  int64_t start_ = 0;
};

template <typename Header, typename Read>
auto OptimisticRead(const Header* h, Read&& read, bool* validated) {
  ReadWait wait;
  bool force = false;
  for (;;) {
    // Acquire: the data loads in read() happen after this version load.
    uint64_t v1 = __atomic_load_n(&h->version, __ATOMIC_ACQUIRE);
    if ((v1 & 1) != 0 && !force) {
      force = wait.Wait(h->owner_pid);
      continue;
    }
    auto result = read();
    if (force) {
      *validated = false;
      return result;
    }
    // Acquire fence: the data loads above complete before the version is loaded again.
    SeqlockFence(std::memory_order_acquire);
    if (__atomic_load_n(&h->version, __ATOMIC_RELAXED) == v1) {
      *validated = true;
      return result;
    }
    force = wait.Wait(h->owner_pid);
  }
}

template <typename Header>
class StripeWriteGuard {
 public:
  template <typename Repair>
  StripeWriteGuard(Header* h, Repair&& repair) : h_(h) {
    auto r = h_->mu.Lock();
    if (r == RobustMutex::LockResult::kUnrecoverable) {
      ok_ = false;
      return;
    }
    // The owner is recorded before the version turns odd, so a reader that sees an odd
    // version can always tell whether its writer is alive. A dead writer may have left the
    // version odd already; then it stays odd and the destructor makes it even.
    St(h_->owner_pid, CachedPid());
    uint64_t ver = Ld(h_->version);
    if ((ver & 1) == 0) St(h_->version, ver + 1);
    // Release: readers that see a later version see the odd one first (pairs with their
    // acquire fence before the re-check).
    SeqlockFence(std::memory_order_release);
    if (r == RobustMutex::LockResult::kOwnerDied) {
      repair();
      h_->mu.MarkConsistent();
    }
    if (g_stripe_write_hook != nullptr) [[unlikely]]
      g_stripe_write_hook(false);
  }
  ~StripeWriteGuard() {
    if (!ok_) return;
    if (g_stripe_write_hook != nullptr) [[unlikely]]
      g_stripe_write_hook(true);
    // Release: every data store above is visible before the even version. The owner is
    // cleared only after, for the same reason it is set before.
    __atomic_store_n(&h_->version, (Ld(h_->version) | 1) + 1, __ATOMIC_RELEASE);
    St(h_->owner_pid, 0);
    h_->mu.Unlock();
  }
  StripeWriteGuard(const StripeWriteGuard&) = delete;
  StripeWriteGuard& operator=(const StripeWriteGuard&) = delete;
  bool ok() const { return ok_; }

 private:
  Header* h_;
  bool ok_ = true;
};

}  // namespace kvidx::index::internal
