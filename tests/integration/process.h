// Real child processes for integration tests: start with arguments, signal, wait, read logs.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/children.h"

namespace kvidx::testing {

inline std::string BuildPath(const std::string& rel) {
  return std::string(KVIDX_BUILD_ROOT) + "/" + rel;
}

// Who a child runs as (a root test dropping privileges): set before exec.
struct Credentials {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

class Process {
 public:
  Process(std::vector<std::string> argv, std::string log_path, const Credentials* as = nullptr)
      : argv_(std::move(argv)), log_(std::move(log_path)) {
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      DieWithParent(parent);  // survives exec: a killed test leaves no process behind
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      setpgid(0, 0);
      if (as != nullptr && (setgroups(as->groups.size(), as->groups.data()) != 0 ||
                            setgid(as->gid) != 0 || setuid(as->uid) != 0)) {
        _exit(126);
      }
      if (as != nullptr) DieWithParent(parent);  // a credential change clears PDEATHSIG
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

// Waits (with a deadline) for a file another process writes whole (written aside, renamed) and
// returns its text, or "" if it never came.
inline std::string WaitForFile(const std::string& path, std::chrono::milliseconds timeout) {
  if (!WaitFor([&] { return access(path.c_str(), R_OK) == 0; }, timeout)) return "";
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The value of the first line `key = "value"` or `key = 'value'` in a TOML text ("" if none).
inline std::string TomlString(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string line;
  const std::string head = key + " = ";
  while (std::getline(in, line)) {
    if (line.rfind(head, 0) != 0 || line.size() <= head.size()) continue;
    const char quote = line[head.size()];  // '...' (literal) or "..." (basic)
    if (quote != '"' && quote != '\'') continue;
    size_t end = line.find(quote, head.size() + 1);
    return line.substr(head.size() + 1,
                       end == std::string::npos ? std::string::npos : end - head.size() - 1);
  }
  return "";
}

// The two endpoints a test peer bound on free ports and wrote to `path` as "PUB ROUTER".
inline std::pair<std::string, std::string> PeerEndpoints(const std::string& path) {
  std::istringstream in(WaitForFile(path, std::chrono::milliseconds(30000)));
  int pub = 0, router = 0;
  in >> pub >> router;
  return {"tcp://127.0.0.1:" + std::to_string(pub), "tcp://127.0.0.1:" + std::to_string(router)};
}

// The two ports a test peer (or kvidx-query --port-file) wrote to `path`; {0, 0} if none came.
inline std::pair<int, int> PeerPorts(const std::string& path) {
  std::istringstream in(WaitForFile(path, std::chrono::milliseconds(30000)));
  int a = 0, b = 0;
  in >> a >> b;
  return {a, b};
}

// A field of /proc/PID/status given in kB ("VmRSS", "VmHWM"), in bytes; 0 if absent.
inline uint64_t ProcStatusBytes(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1)) * 1024;
  }
  return 0;
}

// Under AddressSanitizer a process's resident set says little about kvidx's own memory: the
// allocator keeps freed blocks in quarantine (256 MiB by default) and pads every block. Tests
// assert resident-set bounds in the release run only.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kRssMeaningful = false;
#else
inline constexpr bool kRssMeaningful = true;
#endif

}  // namespace kvidx::testing
