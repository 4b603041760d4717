// A real DNS server for tests: Debian's dnsmasq on 127.0.0.1 and a free high port, answering
// for *.test from a hosts file the test rewrites (SetHosts re-reads it with SIGHUP). Killed and
// reaped with the test (Process).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>
#include <memory>
#include <string>

#include "tests/integration/process.h"

namespace kvidx::testing {

class DnsServer {
 public:
  explicit DnsServer(std::string dir) : dir_(std::move(dir)) {}

  // A free UDP port on loopback: bound at port 0, read, released (dnsmasq needs the number).
  static int FreeUdpPort() {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    int port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
      port = ntohs(a.sin_port);
    close(fd);
    return port;
  }

  // Starts dnsmasq (on `port`, or a free one) with `hosts` ("ADDRESS NAME" lines).
  // `extra`: more dnsmasq options (e.g. --srv-host=...).
  void Start(const std::string& hosts, int port = 0, const std::vector<std::string>& extra = {}) {
    WriteHosts(hosts);
    port_ = port != 0 ? port : FreeUdpPort();
    std::vector<std::string> argv{"/usr/sbin/dnsmasq",
                                  "--keep-in-foreground",
                                  "--conf-file=/dev/null",
                                  "--no-resolv",
                                  "--no-hosts",
                                  "--no-poll",
                                  "--listen-address=127.0.0.1",
                                  "--bind-interfaces",
                                  "--port=" + std::to_string(port_),
                                  "--addn-hosts=" + dir_ + "/hosts",
                                  "--local=/test/",
                                  "--log-facility=-",
                                  "--pid-file=",
                                  "--user=root",
                                  "--group=root",
                                  "--cache-size=0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc_ = std::make_unique<Process>(argv, dir_ + "/dnsmasq.log");
  }
  // Rewrites the hosts file (whole, renamed into place) and makes dnsmasq re-read it.
  void SetHosts(const std::string& hosts) {
    WriteHosts(hosts);
    proc_->Signal(SIGHUP);
  }
  void Kill() {
    proc_->Signal(SIGKILL);
    proc_->Wait();
  }
  std::string server() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  std::string Log() const { return proc_ ? proc_->Log() : ""; }

 private:
  void WriteHosts(const std::string& hosts) {
    std::ofstream(dir_ + "/hosts.tmp") << hosts;
    std::rename((dir_ + "/hosts.tmp").c_str(), (dir_ + "/hosts").c_str());
  }
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<Process> proc_;
};

}  // namespace kvidx::testing
