#include "index/internal/seqlock.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include "shared/clock.h"

namespace kvidx::index {

StripeWriteHook g_stripe_write_hook = nullptr;

namespace internal {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// A pid of 0 or less means no owner was recorded: treat the writer as alive and wait.
bool ProcessAlive(int32_t pid) {
  if (pid <= 0) return true;
  return kill(pid, 0) == 0 || errno == EPERM;
}

std::atomic<int32_t> g_pid{0};
void ResetPidAfterFork() { g_pid.store(0, std::memory_order_relaxed); }

}  // namespace

int32_t CachedPid() {
  int32_t pid = g_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const bool registered = [] {
      pthread_atfork(nullptr, nullptr, &ResetPidAfterFork);
      return true;
    }();
    (void)registered;
    pid = static_cast<int32_t>(getpid());
    g_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

bool ReadWait::Wait(const int32_t& owner_pid) {
  ++spins_;
  if (spins_ < 64) {
    CpuRelax();
    return false;
  }
  if (start_ == 0) start_ = MonotonicNanos();
  if ((spins_ & 15) == 0) {
    if (!ProcessAlive(Ld(owner_pid))) return true;
    if (MonotonicNanos() - start_ > kMaxReaderWaitNs) return true;
  }
  sched_yield();
  return false;
}

}  // namespace internal
}  // namespace kvidx::index
