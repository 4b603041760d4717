// Minimal leveled logging to stderr (journald picks it up under systemd).
//
// Thread-safe: each line is formatted into one buffer and written with a single fwrite.
#pragma once

#include <cstdarg>

namespace kvidx {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Messages below this level are dropped. Default kInfo; KVIDX_LOG_LEVEL=debug|info|warn|error
// in the environment overrides it at first use.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();

// Sets the tag printed in front of every line (e.g. "ingest@0").
void SetLogTag(const char* tag);

void Logf(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace kvidx

#define KVIDX_LOG_DEBUG(...) ::kvidx::Logf(::kvidx::LogLevel::kDebug, __VA_ARGS__)
#define KVIDX_LOG_INFO(...) ::kvidx::Logf(::kvidx::LogLevel::kInfo, __VA_ARGS__)
#define KVIDX_LOG_WARN(...) ::kvidx::Logf(::kvidx::LogLevel::kWarn, __VA_ARGS__)
#define KVIDX_LOG_ERROR(...) ::kvidx::Logf(::kvidx::LogLevel::kError, __VA_ARGS__)
