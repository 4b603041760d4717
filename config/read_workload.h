// Reading [segment]'s workload description (config/sizing.h) from the TOML configuration.
#pragma once

#include <set>
#include <string>

#include "absl/status/status.h"

#include <toml++/toml.h>

#include "config/sizing.h"

namespace kvidx::config {

// Reads the workload_* keys and headroom of [segment] (each added to `known`).
absl::Status ReadWorkload(const toml::table& segment, const std::string& where, Workload* w,
                          std::set<std::string>* known);

}  // namespace kvidx::config
