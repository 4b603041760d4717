// The AIBrix KV event sync configuration names (../shared/spec/aibrix-surface.md), so that a
// gateway's environment written for AIBrix configures kvidx too.
//
// Precedence, lowest first: the built-in default, the TOML file, an AIBRIX_* variable, the
// KVIDX_* variable of the same setting (kvidx's own name is the more specific one). A variable
// whose meaning kvidx has no setting for is accepted, and a warning saying why lands in
// Config::warnings (the services log them at start-up).
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "config/config.h"

namespace kvidx::config {

// A Go duration ("100ms", "5s", "1m30s", "1.5s", "250us", "0") in whole milliseconds, rounded
// down. INVALID_ARGUMENT for anything else (a bare number other than 0, an unknown unit).
absl::StatusOr<uint64_t> ParseGoDuration(std::string_view text);

// Applies the AIBRIX_* variables of the environment to `c`. INVALID_ARGUMENT naming the
// variable for a value that cannot be read.
absl::Status ApplyAibrixEnvironment(Config* c);

}  // namespace kvidx::config
