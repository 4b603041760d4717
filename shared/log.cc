#include "shared/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace kvidx {
namespace {

LogLevel LevelFromEnv() {
  // Read once, on first use, before any thread logs.
  const char* env = std::getenv("KVIDX_LOG_LEVEL");  // NOLINT(concurrency-mt-unsafe)
  if (env == nullptr) return LogLevel::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(env, "warn") == 0) return LogLevel::kWarn;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}

std::atomic<int>& Level() {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}

char g_tag[32] = "kvidx";

}  // namespace

void SetLogLevel(LogLevel level) { Level().store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(Level().load()); }
void SetLogTag(const char* tag) { std::snprintf(g_tag, sizeof(g_tag), "%s", tag); }

void Logf(LogLevel level, const char* fmt, ...) {
  if (static_cast<int>(level) < Level().load(std::memory_order_relaxed)) return;
  static constexpr const char* kNames[] = {"D", "I", "W", "E"};
  char buf[1024];
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm tm_utc{};
  gmtime_r(&ts.tv_sec, &tm_utc);
  int n = std::snprintf(buf, sizeof(buf),
                        "%s %02d:%02d:%02d.%03ld %s: ", kNames[static_cast<int>(level)],
                        tm_utc.tm_hour, tm_utc.tm_min, tm_utc.tm_sec, ts.tv_nsec / 1000000, g_tag);
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(n) + (m < 0 ? 0 : static_cast<size_t>(m));
  if (len > sizeof(buf) - 2) len = sizeof(buf) - 2;
  buf[len++] = '\n';
  std::fwrite(buf, 1, len, stderr);
}

}  // namespace kvidx
