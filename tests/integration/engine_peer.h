// Drives tests/integration/engine_peer.py (an engine publisher written from the wire spec):
// one command at a time through files in its directory (see the script's docstring).
#pragma once

#include <cstdio>
#include <fstream>
#include <string>

#include "tests/integration/process.h"

namespace kvidx::testing {

class Engine {
 public:
  Engine(const std::string& dir, uint64_t seed)
      : dir_(dir),
        proc_({"/usr/bin/python3",
               std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/engine_peer.py", dir,
               std::to_string(seed)},
              dir + "/engine.log") {}
  // Sends one command and waits for its acknowledgement; returns it ("" on time-out).
  std::string Do(const std::string& cmd) {
    Send(cmd);
    return Ack();
  }
  void Send(const std::string& cmd) {
    ++n_;
    {
      std::ofstream out(dir_ + "/cmd.tmp");
      out << cmd << "\n";
    }
    std::rename((dir_ + "/cmd.tmp").c_str(), (dir_ + "/cmd." + std::to_string(n_)).c_str());
  }
  std::string Ack() {
    return WaitForFile(dir_ + "/ack." + std::to_string(n_), std::chrono::milliseconds(60000));
  }
  std::string Log() const { return proc_.Log(); }

 private:
  std::string dir_;
  Process proc_;
  int n_ = 0;
};

}  // namespace kvidx::testing
