// The query process's gRPC listeners, one surface each:
// - router (config `listen`, TCP; server TLS when [tls] cert is set): lookups, stats, pods,
//   sequences, WatchEvents, health. Calls that change state are refused with
//   PERMISSION_DENIED, reason ADMIN_ONLY.
// - admin (config `admin_listen`, a unix socket of mode admin_socket_mode and group
//   admin_group): every call; kvidxctl's default on the host.
// - admin over TCP (config `admin_tcp_listen`, off by default): every call, mutual TLS only, and
//   only for clients whose certificate CN or a SAN is in admin_allowed_clients (others:
//   PERMISSION_DENIED, reason CLIENT_NOT_ALLOWED).
// ReloadTls (SIGHUP) reads the certificate files again and replaces each TLS listener by one
// with the new credentials on the same port (SO_REUSEPORT), then stops the old one; if a file
// cannot be read the old listener stays and the error is returned.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include <grpcpp/grpcpp.h>

#include "config/config.h"
#include "kvidx.grpc.pb.h"
#include "query/service.h"

namespace kvidx::query {

enum class Surface { kRouter, kAdmin, kAdminTls };

// Whether `method` (a KvIndex method name) changes state: served on the admin surfaces only.
bool IsAdminMethod(std::string_view method);

class Listeners {
 public:
  static absl::StatusOr<std::unique_ptr<Listeners>> Start(const config::Config& config,
                                                          KvIndexService* service);
  ~Listeners();
  Listeners(const Listeners&) = delete;
  Listeners& operator=(const Listeners&) = delete;

  absl::Status ReloadTls();
  void Shutdown();
  int router_port() const;
  int admin_tcp_port() const;  // 0: none

  struct Listener;

 private:
  Listeners(const config::Config& config, KvIndexService* service);
  absl::StatusOr<std::unique_ptr<Listener>> StartOne(Surface surface, const std::string& address);

  config::Config config_;
  KvIndexService* service_;
  std::vector<std::unique_ptr<Listener>> listeners_;
};

}  // namespace kvidx::query
