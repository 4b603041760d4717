// Child processes in tests: every fork is owned by a guard that SIGKILLs and reaps it when the
// guard goes out of scope (a failed ASSERT returns early; the child must not outlive the test),
// children die with the test process (PR_SET_PDEATHSIG), and every wait has a deadline.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <type_traits>
#include <utility>

namespace kvidx::testing {

// Polls `cond` until it holds or `timeout` passes; returns its last value. Never a fixed
// sleep: the wait ends as soon as the event happened.
template <typename F>
bool WaitFor(F&& cond, std::chrono::milliseconds timeout,
             std::chrono::microseconds poll = std::chrono::microseconds(2000)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(poll);
  }
  return cond();
}

// In a freshly forked child: die when the parent does, even if it dies by SIGKILL.
inline void DieWithParent(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(125);  // the parent died before prctl took effect
}

class ChildGuard {
 public:
  ChildGuard() = default;
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ~ChildGuard() { Kill(); }
  ChildGuard(ChildGuard&& o) noexcept : pid_(std::exchange(o.pid_, -1)) {}
  ChildGuard& operator=(ChildGuard&& o) noexcept {
    if (this != &o) {
      Kill();
      pid_ = std::exchange(o.pid_, -1);
    }
    return *this;
  }
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;

  pid_t pid() const { return pid_; }
  bool alive() const { return pid_ > 0; }

  // Waits up to `timeout` for the child to exit on its own; returns its wait status and
  // forgets it, or -1 (the child still runs and is still owned).
  int Wait(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return -1;
    int status = 0;
    bool done = WaitFor(
        [&] {
          pid_t r = waitpid(pid_, &status, WNOHANG);
          return r == pid_ || r < 0;
        },
        timeout, std::chrono::microseconds(500));
    if (!done) return -1;
    pid_ = -1;
    return status;
  }
  // SIGKILLs and reaps the child; returns its wait status (-1 if there was none).
  int Kill() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
};

// Forks; the child runs `body` and exits with its return value (0 if it returns void). The
// child never returns into the test framework.
template <typename F>
ChildGuard ForkChild(F&& body) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    DieWithParent(parent);
    if constexpr (std::is_void_v<decltype(body())>) {
      body();
      _exit(0);
    } else {
      _exit(static_cast<int>(body()));
    }
  }
  return ChildGuard(pid);
}

}  // namespace kvidx::testing
