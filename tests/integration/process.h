// Real child processes for integration tests: start with arguments, signal, wait, read logs.
#ifndef KVIDX_TESTS_INTEGRATION_PROCESS_H
#define KVIDX_TESTS_INTEGRATION_PROCESS_H

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace kvidx::testing {

inline std::string BuildPath(const std::string& rel) {
  return std::string(KVIDX_BUILD_ROOT) + "/" + rel;
}

class Process {
 public:
  Process(std::vector<std::string> argv, std::string log_path)
      : argv_(std::move(argv)), log_(std::move(log_path)) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      setpgid(0, 0);
      std::vector<char*> args;
      for (auto& a : argv_) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Process() {
    if (running()) {
      Signal(SIGKILL);
      Wait();
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool running() {
    if (pid_ <= 0 || exited_) return false;
    int st;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      status_ = st;
      return false;
    }
    return true;
  }
  void Signal(int sig) {
    if (pid_ > 0 && !exited_) kill(pid_, sig);
  }
  // Waits up to `timeout`; returns the wait status, or -1 on time-out.
  int Wait(std::chrono::milliseconds timeout = std::chrono::milliseconds(30000)) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (running()) {
      if (std::chrono::steady_clock::now() > until) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status_;
  }
  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  std::vector<std::string> argv_;
  std::string log_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
};

// A port base unlikely to collide with parallel tests: derived from the pid.
inline int PortBase(int slot = 0) { return 20000 + (getpid() % 1000) * 32 + (slot % 2) * 16; }

template <typename F>
bool WaitFor(F&& cond, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

}  // namespace kvidx::testing

#endif  // KVIDX_TESTS_INTEGRATION_PROCESS_H
