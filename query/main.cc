// kvidx-query: the gRPC query server (kvidx.v1.KvIndex, health, reflection) and Prometheus
// metrics, over a read-only mapping of the index.
//
//   kvidx-query [--config FILE] [--listen HOST:PORT] [--metrics HOST:PORT|off]
//               [--http HOST:PORT|off] [--port-file F]
// --listen HOST:0 takes a free port (and metrics and http HOST:0 too); --port-file then
// receives the bound gRPC port, the metrics port, the admin TCP port (0: none) and the HTTP
// port (0: off), a line each, once serving. SIGHUP re-reads the TLS certificate files
// (query/listeners.h).
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <fstream>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <systemd/sd-daemon.h>

#include "config/config.h"
#include "control/control_area.h"
#include "index/segment.h"
#include "query/http_server.h"
#include "query/listeners.h"
#include "query/metrics.h"
#include "query/service.h"
#include "shared/log.h"

namespace {
std::atomic<bool> g_stop{false};
std::atomic<bool> g_hangup{false};
void OnSignal(int) { g_stop = true; }
void OnHangup(int) { g_hangup = true; }
}  // namespace

int main(int argc, char** argv) {
  const char* env_config = std::getenv("KVIDX_CONFIG");  // NOLINT(concurrency-mt-unsafe)
  std::string config_path = env_config != nullptr ? env_config : "";
  std::string listen, metrics, http, port_file;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(
          stderr,
          "usage: kvidx-query [--config FILE] [--listen HOST:PORT] [--metrics HOST:PORT|off] "
          "[--http HOST:PORT|off] [--port-file FILE]\n");
      return 2;
    }
    if (a == "--config")
      config_path = argv[++i];
    else if (a == "--listen")
      listen = argv[++i];
    else if (a == "--port-file")
      port_file = argv[++i];
    else if (a == "--metrics")
      metrics = argv[++i];
    else if (a == "--http")
      http = argv[++i];
    else {
      std::fprintf(stderr, "kvidx-query: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  kvidx::SetLogTag("query");
  try {
    auto config = kvidx::config::LoadConfig(config_path);
    if (!config.ok()) {
      KVIDX_LOG_ERROR("%s", config.status().ToString().c_str());
      return 1;
    }
    for (const std::string& w : config->warnings) KVIDX_LOG_WARN("%s", w.c_str());
    if (!listen.empty()) config->listen = listen;
    if (!metrics.empty()) config->metrics_listen = metrics;
    if (!http.empty()) config->http_listen = http == "off" ? "" : http;
    // Wait for the ingest workers to create the segment and the control area (they own them;
    // one of another owner or a wider mode is refused).
    auto owner = kvidx::config::ResolveOwner(config->segment_owner);
    if (!owner.ok()) {
      KVIDX_LOG_ERROR("%s", owner.status().ToString().c_str());
      return 1;
    }
    KVIDX_LOG_INFO("attaching segment %s", config->segment.c_str());
    auto attached = kvidx::index::Segment::AwaitAttach(
        config->segment, kvidx::index::Segment::Access::kReadOnly, config->geometry,
        std::chrono::seconds(60), &g_stop, kvidx::ShmOwnership{*owner, config->segment_mode});
    if (!attached.ok()) {
      KVIDX_LOG_ERROR("segment: %s", attached.status().ToString().c_str());
      return 1;
    }
    std::unique_ptr<kvidx::index::Segment> segment = std::move(*attached);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    auto open_control = [&] {
      return kvidx::control::ControlArea::Open(kvidx::control::ControlName(config->segment),
                                               config->control_mode,
                                               kvidx::ShmOwnership{*owner, config->control_mode},
                                               /*create=*/false);
    };
    auto control = open_control();
    while (absl::IsNotFound(control.status()) && std::chrono::steady_clock::now() < until &&
           !g_stop) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      control = open_control();
    }
    if (!control.ok()) {
      KVIDX_LOG_ERROR("%s", control.status().ToString().c_str());
      return 1;
    }
    kvidx::query::KvIndexService service(*config, std::move(segment), std::move(*control));
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    auto listeners = kvidx::query::Listeners::Start(*config, &service);
    if (!listeners.ok()) {
      KVIDX_LOG_ERROR("%s", listeners.status().ToString().c_str());
      return 1;
    }
    const int port = (*listeners)->router_port();
    std::unique_ptr<kvidx::query::Metrics> m;
    if (config->metrics_listen != "off") {
      auto started = kvidx::query::Metrics::Start(config->metrics_listen, &service);
      if (!started.ok())
        KVIDX_LOG_WARN("%s", started.status().ToString().c_str());
      else
        m = std::move(*started);
    }
    std::unique_ptr<kvidx::query::HttpServer> web;
    if (!config->http_listen.empty()) {
      kvidx::query::HttpOptions ho;
      ho.max_connections = config->max_http_connections;
      ho.max_body_bytes = config->max_request_bytes;
      auto started = kvidx::query::HttpServer::Start(config->http_listen, &service, ho);
      if (!started.ok()) {
        KVIDX_LOG_ERROR("%s", started.status().ToString().c_str());
        return 1;
      }
      web = std::move(*started);
      KVIDX_LOG_INFO("serving HTTP/JSON and WebSocket on %s (port %d)", config->http_listen.c_str(),
                     web->port());
    }
    KVIDX_LOG_INFO("serving kvidx.v1.KvIndex on %s (port %d%s), admin on %s%s%s, metrics on %s",
                   config->listen.c_str(), port, config->tls_cert.empty() ? "" : ", TLS",
                   config->admin_listen.c_str(),
                   config->admin_tcp_listen.empty() ? "" : " and mTLS ",
                   config->admin_tcp_listen.c_str(), config->metrics_listen.c_str());
    struct sigaction sa {};
    sa.sa_handler = OnSignal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sa.sa_handler = OnHangup;
    sigaction(SIGHUP, &sa, nullptr);
    if (!port_file.empty()) {
      {
        std::ofstream out(port_file + ".tmp");
        // gRPC, metrics (0: off), admin over TCP (0: none)
        out << port << "\n"
            << (m ? m->port() : 0) << "\n"
            << (*listeners)->admin_tcp_port() << "\n"
            << (web ? web->port() : 0) << "\n";
      }
      std::rename((port_file + ".tmp").c_str(), port_file.c_str());
    }
    sd_notify(0, "READY=1");
    while (!g_stop) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      sd_notify(0, "WATCHDOG=1");
      if (g_hangup.exchange(false)) {
        // SIGHUP: the TLS listeners take the certificate files again (ExecReload).
        sd_notify(0, "RELOADING=1");
        (void)(*listeners)->ReloadTls();
        sd_notify(0, "READY=1");
      }
    }
    sd_notify(0, "STOPPING=1");
    if (web) web->Shutdown();
    (*listeners)->Shutdown();
    KVIDX_LOG_INFO("stopped");
    return 0;
  } catch (const std::exception& e) {
    KVIDX_LOG_ERROR("fatal: %s", e.what());
    return 1;
  }
}
