// The configuration, as the ingest side names it (the component is config/).
#pragma once

#include "config/config.h"

namespace kvidx::ingest {

using config::Config;
using config::LoadConfig;
using config::ModelConfig;
using config::OwnerWorker;
using config::ParseConfig;
using config::PublisherConfig;

}  // namespace kvidx::ingest
