// kvidx-ingest: one ingest worker process (run as kvidx-ingest@N under systemd).
//
//   kvidx-ingest [--config FILE] [--worker K] [--workers N] [--sizing]
//
// --sizing prints what the configuration sizes the segment for (config/sizing.h) and exits.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <systemd/sd-daemon.h>

#include "ingest/config.h"
#include "ingest/worker.h"
#include "shared/log.h"

namespace {
std::atomic<bool> g_stop{false};
std::atomic<bool> g_reload{false};
void OnSignal(int sig) {
  if (sig == SIGHUP)
    g_reload = true;
  else
    g_stop = true;
}
}  // namespace

int main(int argc, char** argv) {
  const char* env_config = std::getenv("KVIDX_CONFIG");  // NOLINT(concurrency-mt-unsafe)
  std::string config_path = env_config != nullptr ? env_config : "";
  long worker = -1;
  long workers = -1;
  bool sizing = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kvidx-ingest: %s needs a value\n", a.c_str());
        std::exit(2);  // NOLINT(concurrency-mt-unsafe): flags are parsed before any thread starts
      }
      return argv[++i];
    };
    if (a == "--config")
      config_path = next();
    else if (a == "--worker")
      worker = std::strtol(next(), nullptr, 10);
    else if (a == "--workers")
      workers = std::strtol(next(), nullptr, 10);
    else if (a == "--sizing")
      sizing = true;
    else {
      std::fprintf(stderr,
                   "usage: kvidx-ingest [--config FILE] [--worker K] [--workers N] [--sizing]\n");
      return 2;
    }
  }
  try {
    auto config = kvidx::ingest::LoadConfig(config_path);
    if (!config.ok()) {
      std::fprintf(stderr, "kvidx-ingest: %s\n", config.status().ToString().c_str());
      return 1;
    }
    if (sizing) {
      std::fputs(kvidx::config::DescribeSizing(config->workload, config->geometry).c_str(), stdout);
      return 0;
    }
    if (workers > 0) config->workers = static_cast<uint32_t>(workers);
    if (worker < 0) worker = 0;
    std::string tag = "ingest@" + std::to_string(worker);
    kvidx::SetLogTag(tag.c_str());
    for (const std::string& w : config->warnings) KVIDX_LOG_WARN("%s", w.c_str());
    struct sigaction sa {};
    sa.sa_handler = OnSignal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
    kvidx::ingest::Worker w(*config, static_cast<uint32_t>(worker));
    absl::Status st = w.Init();
    if (!st.ok()) {
      KVIDX_LOG_ERROR("start: %s", st.ToString().c_str());
      return 1;
    }
    KVIDX_LOG_INFO("worker %ld of %u: %zu publishers, segment %s", worker, config->workers,
                   w.link_count(), config->segment.c_str());
    w.set_heartbeat([] { sd_notify(0, "WATCHDOG=1"); });
    sd_notify(0, "READY=1");
    w.Run(g_stop, [&] {
      sd_notify(0, "WATCHDOG=1");
      if (g_reload.exchange(false)) {
        auto fresh = kvidx::ingest::LoadConfig(config_path);
        absl::Status rs = fresh.ok() ? w.Reload(*fresh) : fresh.status();
        if (rs.ok())
          KVIDX_LOG_INFO("configuration reloaded");
        else
          KVIDX_LOG_ERROR("reload: %s", rs.ToString().c_str());
      }
    });
    sd_notify(0, "STOPPING=1");
    KVIDX_LOG_INFO("stopped");
    return 0;
  } catch (const std::exception& e) {
    KVIDX_LOG_ERROR("fatal: %s", e.what());
    return 1;
  }
}
