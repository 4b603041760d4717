// libFuzzer harness for the configuration (issue 11): any text is accepted or refused with a
// status by ParseConfig, never a crash, an out-of-bounds read or undefined behaviour (built with
// ASan + UBSan); and a configuration it accepts, written back with FleetToml (the schema
// kvidx-sim writes), parses again to the same models and publishers.
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <string_view>

#include <toml++/toml.h>

#include "config/config.h"

using namespace kvidx::config;

namespace {

[[noreturn]] void Disagree(const char* what) {
  std::fprintf(stderr, "FleetToml round trip changed %s\n", what);
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = ParseConfig(text, "fuzz.toml");
  if (!c.ok()) return 0;
  // The bind allow-list goes with the fleet: binds are valid only under it.
  toml::table ingest{{"bind_tcp_ports", c->bind_tcp_ports}, {"bind_ipc_dir", c->bind_ipc_dir}};
  std::ostringstream prefix;
  prefix << toml::table{{"ingest", std::move(ingest)}} << "\n";
  const std::string fleet = prefix.str() + FleetToml(c->models, c->publishers);
  auto back = ParseConfig(fleet, "fleet.toml");
  if (!back.ok()) {
    std::fprintf(stderr, "FleetToml wrote what ParseConfig refuses: %s\n%s\n",
                 std::string(back.status().message()).c_str(), fleet.c_str());
    __builtin_trap();
  }
  if (back->models.size() != c->models.size()) Disagree("the model count");
  for (size_t i = 0; i < c->models.size(); ++i) {
    const ModelConfig &a = c->models[i], &b = back->models[i];
    if (a.name != b.name || a.block_size != b.block_size ||
        a.key_by_engine_hash != b.key_by_engine_hash || a.lora_names != b.lora_names ||
        a.tokenizer_endpoint != b.tokenizer_endpoint || a.tokenizer_model != b.tokenizer_model)
      Disagree("a model");
  }
  if (back->publishers.size() != c->publishers.size()) Disagree("the publisher count");
  for (size_t i = 0; i < c->publishers.size(); ++i) {
    const PublisherConfig &a = c->publishers[i], &b = back->publishers[i];
    if (a.pod != b.pod || a.dp_rank != b.dp_rank || a.model != b.model ||
        a.endpoint != b.endpoint || a.replay_endpoint != b.replay_endpoint || a.topic != b.topic ||
        a.dialect != b.dialect || a.bind != b.bind || a.quota_pairs != b.quota_pairs ||
        a.private_engine_hashes != b.private_engine_hashes)
      Disagree("a publisher");
  }
  return 0;
}
