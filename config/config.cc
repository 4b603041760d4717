#include "config/config.h"

#include <pwd.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"

#include <toml++/toml.h>

#include "config/aibrix_env.h"
#include "config/read_workload.h"
#include "control/layout.h"
#include "shared/status.h"

namespace kvidx::config {

using wire::ParseDialect;
namespace {

// Default geometry: about 1 GiB, enough for ~2 M blocks held by a handful of pods each.
index::Geometry DefaultGeometry() {
  index::Geometry g;
  g.blocks = 2'000'000;
  g.pairs = 16'000'000;
  g.publishers = 1024;
  g.namespaces = 256;
  g.stripes = 1024;
  return g;
}

template <typename T>
absl::Status Read(const toml::table& t, const char* key, T* out, const std::string& where) {
  const toml::node* n = t.get(key);
  if (n == nullptr) return absl::OkStatus();
  if constexpr (std::is_same_v<T, std::string>) {
    if (auto v = n->value<std::string>()) {
      *out = *v;
      return absl::OkStatus();
    }
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    if (const toml::array* a = n->as_array()) {
      std::vector<std::string> v;
      for (const toml::node& e : *a) {
        auto str = e.value<std::string>();
        if (!str) break;
        v.push_back(*str);
      }
      if (v.size() == a->size()) {
        *out = std::move(v);
        return absl::OkStatus();
      }
    }
  } else if constexpr (std::is_same_v<T, bool>) {
    if (auto v = n->value<bool>()) {
      *out = *v;
      return absl::OkStatus();
    }
  } else {
    // Integers only: toml++ would convert a float (1e24) with undefined behaviour (found by
    // config_fuzz), and a value past the field's range would be cut.
    if (const toml::value<int64_t>* v = n->as_integer();
        v != nullptr && v->get() >= 0 &&
        static_cast<uint64_t>(v->get()) <= uint64_t{std::numeric_limits<T>::max()}) {
      *out = static_cast<T>(v->get());
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": key '", key, "' has the wrong type or a negative value (line ",
                   static_cast<uint64_t>(n->source().begin.line), ")"));
}

// Reads `key` of `tbl` into `field` and records the key as known for that table (`known`, a
// map in the calling scope): any key of the file that no read names is an error.
#define KVIDX_READ(tbl, key, field, where)          \
  do {                                              \
    known[&(tbl)].insert(key);                      \
    absl::Status s_ = Read(tbl, key, field, where); \
    if (!s_.ok()) return s_;                        \
  } while (0)

// The first key of `t` not in `names`, as "FILE:LINE: unknown key 'K' in SECTION".
absl::Status UnknownKeys(const toml::table& t, const std::set<std::string>& names,
                         const std::string& origin, const std::string& section) {
  for (const auto& [k, v] : t) {
    if (names.count(std::string(k.str())) != 0) continue;
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ":", static_cast<uint64_t>(k.source().begin.line), ": unknown key '",
                     std::string(k.str()), "' in ", section));
  }
  return absl::OkStatus();
}

void EnvString(const char* name, std::string* out) {
  // Configuration is read at start-up and on SIGHUP, from the one main thread.
  if (const char* v = std::getenv(name)) *out = v;  // NOLINT(concurrency-mt-unsafe)
}
template <typename T>
absl::Status EnvNumber(const char* name, T* out) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
  if (v == nullptr) return absl::OkStatus();
  char* end = nullptr;
  unsigned long long n = std::strtoull(v, &end, 0);
  if (end == v || *end != '\0') {
    return absl::InvalidArgumentError(
        absl::StrCat("environment ", name, "='", v, "' is not a number"));
  }
  *out = static_cast<T>(n);
  return absl::OkStatus();
}

// An octal mode string ("0640") of key `key` into `*out`.
absl::Status ReadMode(const toml::table& t, const char* key, uint32_t* out,
                      const std::string& where) {
  std::string mode;
  KVIDX_RETURN_IF_ERROR(Read(t, key, &mode, where));
  if (mode.empty()) return absl::OkStatus();
  char* end = nullptr;
  unsigned long v = std::strtoul(mode.c_str(), &end, 8);
  if (*end != '\0' || v > 0777) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": key '", key, "' is not an octal file mode: '", mode, "'"));
  }
  *out = static_cast<uint32_t>(v);
  return absl::OkStatus();
}

// Whether `port` is in the ranges of `list` ("5557-5600,6001").
bool PortListed(const std::string& list, uint64_t port) {
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    uint64_t lo = 0, hi = 0;
    char dash = 0;
    std::stringstream is(item);
    is >> lo;
    if (is >> dash) {
      if (dash != '-' || !(is >> hi)) continue;
    } else {
      hi = lo;
    }
    if (port >= lo && port <= hi) return true;
  }
  return false;
}

// OK if `list` is a port list PortListed understands.
absl::Status CheckPortList(const std::string& list) {
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t dash = item.find('-');
    for (const std::string& part :
         dash == std::string::npos
             ? std::vector<std::string>{item}
             : std::vector<std::string>{item.substr(0, dash), item.substr(dash + 1)}) {
      char* end = nullptr;
      unsigned long v = std::strtoul(part.c_str(), &end, 10);
      if (part.empty() || *end != '\0' || v == 0 || v > 65535) {
        return absl::InvalidArgumentError(
            absl::StrCat("bind_tcp_ports: '", item, "' is not a port or a port range"));
      }
    }
  }
  return absl::OkStatus();
}

// Cross-key rules of the listeners and the bind allow-list.
absl::Status CheckSecurity(const Config& c, const std::string& origin) {
  if (!c.admin_tcp_listen.empty() && (c.tls_cert.empty() || c.tls_key.empty() ||
                                      c.tls_client_ca.empty() || c.admin_allowed_clients.empty())) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin,
                     ": admin_tcp_listen needs mutual TLS: [tls] cert, key and client_ca, and "
                     "admin_allowed_clients naming the operators' certificates"));
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError(origin + ": [tls] needs both cert and key");
  }
  if (c.tls_require_client_cert && (c.tls_client_ca.empty() || c.tls_cert.empty())) {
    return absl::InvalidArgumentError(origin +
                                      ": [tls] require_client_cert needs cert, key and client_ca");
  }
  if (!c.bind_ipc_dir.empty() &&
      (c.bind_ipc_dir[0] != '/' || c.bind_ipc_dir.rfind("/dev/shm", 0) == 0 ||
       c.bind_ipc_dir.find("/..") != std::string::npos)) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": bind_ipc_dir '", c.bind_ipc_dir,
                     "' must be an absolute directory outside /dev/shm, where the segments live"));
  }
  KVIDX_RETURN_IF_ERROR(CheckPortList(c.bind_tcp_ports));
  for (const PublisherConfig& p : c.publishers) {
    if (!p.bind) continue;
    absl::Status st = CheckBindEndpoint(c, p.endpoint);
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": publisher ", p.pod, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckBindEndpoint(const Config& c, const std::string& endpoint) {
  if (endpoint.rfind("tcp://", 0) == 0) {
    size_t colon = endpoint.rfind(':');
    std::string port = endpoint.substr(colon + 1);
    char* end = nullptr;
    unsigned long n = std::strtoul(port.c_str(), &end, 10);
    if (!port.empty() && *end == '\0' && PortListed(c.bind_tcp_ports, n)) {
      return absl::OkStatus();
    }
    return absl::PermissionDeniedError(
        absl::StrCat("binding ", endpoint, " is not allowed: its port is not in bind_tcp_ports ('",
                     c.bind_tcp_ports, "')"));
  }
  if (endpoint.rfind("ipc://", 0) == 0) {
    std::string path = endpoint.substr(6);
    std::string dir = c.bind_ipc_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    bool under = !dir.empty() && path.size() > dir.size() + 1 && path.rfind(dir + "/", 0) == 0;
    bool escapes = path.find("/../") != std::string::npos ||
                   path.find("/./") != std::string::npos || path.find("//") != std::string::npos;
    if (under && !escapes && path.rfind("/dev/shm", 0) != 0) return absl::OkStatus();
    return absl::PermissionDeniedError(
        absl::StrCat("binding ", endpoint, " is not allowed: ipc binds only under bind_ipc_dir ('",
                     c.bind_ipc_dir, "'), never in /dev/shm, where the segments live"));
  }
  return absl::PermissionDeniedError(
      absl::StrCat("binding ", endpoint, " is not allowed: only tcp:// and ipc:// binds"));
}

absl::StatusOr<uint32_t> ResolveOwner(const std::string& owner) {
  if (owner.empty()) return static_cast<uint32_t>(geteuid());
  char* end = nullptr;
  unsigned long n = std::strtoul(owner.c_str(), &end, 10);
  if (*end == '\0') return static_cast<uint32_t>(n);
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (getpwnam_r(owner.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("segment_owner '", owner, "' is neither a user of this host nor a uid"));
  }
  return static_cast<uint32_t>(found->pw_uid);
}

std::string FleetToml(const std::vector<ModelConfig>& models,
                      const std::vector<PublisherConfig>& publishers) {
  toml::array model_tables;
  for (const ModelConfig& m : models) {
    toml::table t{{"name", m.name}, {"block_size", static_cast<int64_t>(m.block_size)}};
    if (m.key_by_engine_hash) t.insert("key_by_engine_hash", true);
    if (!m.tokenizer_endpoint.empty()) t.insert("tokenizer_endpoint", m.tokenizer_endpoint);
    if (!m.tokenizer_model.empty()) t.insert("tokenizer_model", m.tokenizer_model);
    if (!m.engine_hash.empty()) {
      t.insert("engine_hash", m.engine_hash);
      t.insert("engine_hash_seed", m.engine_hash_seed);
      t.insert("hash_check_every", static_cast<int64_t>(m.hash_check_every));
    }
    if (!m.lora_names.empty()) {
      toml::table names;
      for (const auto& [id, name] : m.lora_names) names.insert(std::to_string(id), name);
      t.insert("lora_names", std::move(names));
    }
    model_tables.push_back(std::move(t));
  }
  toml::array publisher_tables;
  for (const PublisherConfig& p : publishers) {
    toml::table t{{"pod", p.pod},
                  {"dp_rank", static_cast<int64_t>(p.dp_rank)},
                  {"model", p.model},
                  {"endpoint", p.endpoint},
                  {"dialect", std::string(wire::DialectName(p.dialect))}};
    if (!p.replay_endpoint.empty()) t.insert("replay_endpoint", p.replay_endpoint);
    if (!p.topic.empty()) t.insert("topic", p.topic);
    if (p.bind) t.insert("bind", true);
    if (p.quota_pairs != 0) t.insert("quota_pairs", static_cast<int64_t>(p.quota_pairs));
    if (p.private_engine_hashes) t.insert("private_engine_hashes", true);
    publisher_tables.push_back(std::move(t));
  }
  toml::table root;
  if (!model_tables.empty()) root.insert("model", std::move(model_tables));
  if (!publisher_tables.empty()) root.insert("publisher", std::move(publisher_tables));
  std::ostringstream out;
  out << root << "\n";
  return out.str();
}

std::string AdapterName(const std::map<int64_t, std::string>& names, int64_t lora_id) {
  auto it = names.find(lora_id);
  return it != names.end() ? it->second : absl::StrCat("lora-", lora_id);
}

index::PublisherSpec PublisherSpecFor(const PublisherConfig& p, index::NamespaceId ns,
                                      uint32_t workers) {
  index::PublisherSpec spec;
  spec.pod = p.pod;
  spec.dp_rank = p.dp_rank;
  spec.ns = ns;
  spec.worker = OwnerWorker(p.pod, p.dp_rank, workers);
  spec.quota_pairs = p.quota_pairs;
  spec.private_engine_hashes = p.private_engine_hashes;
  spec.bind_subscriber = p.bind;
  spec.endpoint = p.endpoint;
  spec.replay_endpoint = p.replay_endpoint;
  spec.topic = p.topic;
  spec.dialect = wire::DialectName(p.dialect);
  return spec;
}

uint32_t OwnerWorker(const std::string& pod, uint32_t dp_rank, uint32_t workers) {
  if (workers <= 1) return 0;
  std::string id = absl::StrCat(pod, "#", dp_rank);
  return static_cast<uint32_t>(XXH3_64bits(id.data(), id.size()) % workers);
}

absl::StatusOr<Config> ParseConfig(std::string_view text, const std::string& origin) {
  Config c;
  std::map<const toml::table*, std::set<std::string>> known;
  c.geometry = DefaultGeometry();
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ":",
                                                   static_cast<uint64_t>(e.source().begin.line),
                                                   ": ", std::string(e.description())));
  }
  if (const toml::table* s = root["segment"].as_table()) {
    std::string where = origin + " [segment]";
    KVIDX_READ(*s, "name", &c.segment, where);
    KVIDX_READ(*s, "blocks", &c.geometry.blocks, where);
    KVIDX_READ(*s, "pairs", &c.geometry.pairs, where);
    KVIDX_READ(*s, "engine_hashes", &c.geometry.engine_hashes, where);
    KVIDX_READ(*s, "holder_chunks", &c.geometry.holder_chunks, where);
    KVIDX_READ(*s, "publishers", &c.geometry.publishers, where);
    KVIDX_READ(*s, "namespaces", &c.geometry.namespaces, where);
    KVIDX_READ(*s, "stripes", &c.geometry.stripes, where);
    KVIDX_READ(*s, "owner", &c.segment_owner, where);
    KVIDX_RETURN_IF_ERROR(ReadWorkload(*s, where, &c.workload, &known[s]));
    if (c.workload.blocks != 0 && !s->contains("stripes")) c.geometry.stripes = 0;
    KVIDX_RETURN_IF_ERROR(ApplyWorkload(c.workload, &c.geometry));
    known[s].insert({"mode", "control_mode"});
    KVIDX_RETURN_IF_ERROR(ReadMode(*s, "mode", &c.segment_mode, where));
    KVIDX_RETURN_IF_ERROR(ReadMode(*s, "control_mode", &c.control_mode, where));
  }
  if (const toml::table* s = root["ingest"].as_table()) {
    std::string where = origin + " [ingest]";
    KVIDX_READ(*s, "workers", &c.workers, where);
    KVIDX_READ(*s, "reconnect_initial_ms", &c.reconnect_initial_ms, where);
    KVIDX_READ(*s, "reconnect_max_ms", &c.reconnect_max_ms, where);
    KVIDX_READ(*s, "replay_timeout_ms", &c.replay_timeout_ms, where);
    KVIDX_READ(*s, "idle_probe_ms", &c.idle_probe_ms, where);
    KVIDX_READ(*s, "poll_timeout_ms", &c.poll_timeout_ms, where);
    KVIDX_READ(*s, "linger_ms", &c.zmq_linger_ms, where);
    KVIDX_READ(*s, "unreachable_after_ms", &c.unreachable_after_ms, where);
    KVIDX_READ(*s, "drop_after_ms", &c.drop_after_ms, where);
    KVIDX_READ(*s, "max_kvbm_instances", &c.max_kvbm_instances, where);
    KVIDX_READ(*s, "rcvhwm", &c.rcvhwm, where);
    KVIDX_READ(*s, "max_payload_bytes", &c.max_payload_bytes, where);
    KVIDX_READ(*s, "max_buffered_batches", &c.max_buffered_batches, where);
    KVIDX_READ(*s, "queue_bytes", &c.queue_bytes, where);
    KVIDX_READ(*s, "replay_buffer_bytes", &c.replay_buffer_bytes, where);
    KVIDX_READ(*s, "sequence_table_bytes", &c.sequence_table_bytes, where);
    KVIDX_READ(*s, "max_adapters_per_model", &c.max_adapters_per_model, where);
    KVIDX_READ(*s, "strict_tags", &c.strict_tags, where);
    KVIDX_READ(*s, "bind_tcp_ports", &c.bind_tcp_ports, where);
    KVIDX_READ(*s, "bind_ipc_dir", &c.bind_ipc_dir, where);
  }
  if (const toml::table* s = root["query"].as_table()) {
    std::string where = origin + " [query]";
    KVIDX_READ(*s, "listen", &c.listen, where);
    KVIDX_READ(*s, "metrics_listen", &c.metrics_listen, where);
    KVIDX_READ(*s, "http_listen", &c.http_listen, where);
    KVIDX_READ(*s, "max_http_connections", &c.max_http_connections, where);
    KVIDX_READ(*s, "tokenizer_timeout_ms", &c.tokenizer_timeout_ms, where);
    KVIDX_READ(*s, "tokenizer_cache_entries", &c.tokenizer_cache_entries, where);
    KVIDX_READ(*s, "tokenizer_connections", &c.tokenizer_connections, where);
    KVIDX_READ(*s, "max_tokens", &c.max_tokens, where);
    KVIDX_READ(*s, "max_lookups_per_call", &c.max_lookups_per_call, where);
    KVIDX_READ(*s, "max_inflight_rpcs", &c.max_inflight_rpcs, where);
    KVIDX_READ(*s, "max_request_bytes", &c.max_request_bytes, where);
    KVIDX_READ(*s, "max_watch_streams", &c.max_watch_streams, where);
    KVIDX_READ(*s, "prediction_ttl_ms", &c.prediction_ttl_ms, where);
    KVIDX_READ(*s, "max_predicted_blocks", &c.max_predicted_blocks, where);
    KVIDX_READ(*s, "min_stats_interval_ms", &c.min_stats_interval_ms, where);
    KVIDX_READ(*s, "allow_rpc_bind", &c.allow_rpc_bind, where);
    KVIDX_READ(*s, "admin_listen", &c.admin_listen, where);
    KVIDX_READ(*s, "admin_group", &c.admin_group, where);
    KVIDX_READ(*s, "admin_tcp_listen", &c.admin_tcp_listen, where);
    KVIDX_READ(*s, "admin_allowed_clients", &c.admin_allowed_clients, where);
    known[s].insert("admin_socket_mode");
    KVIDX_RETURN_IF_ERROR(ReadMode(*s, "admin_socket_mode", &c.admin_socket_mode, where));
  }
  if (const toml::table* s = root["tls"].as_table()) {
    std::string where = origin + " [tls]";
    KVIDX_READ(*s, "cert", &c.tls_cert, where);
    KVIDX_READ(*s, "key", &c.tls_key, where);
    KVIDX_READ(*s, "client_ca", &c.tls_client_ca, where);
    KVIDX_READ(*s, "require_client_cert", &c.tls_require_client_cert, where);
  }
  if (const toml::array* models = root["model"].as_array()) {
    for (const toml::node& n : *models) {
      const toml::table* m = n.as_table();
      if (m == nullptr) return absl::InvalidArgumentError(origin + ": [[model]] must be tables");
      ModelConfig mc;
      std::string where = origin + " [[model]]";
      KVIDX_READ(*m, "name", &mc.name, where);
      KVIDX_READ(*m, "block_size", &mc.block_size, where);
      KVIDX_READ(*m, "key_by_engine_hash", &mc.key_by_engine_hash, where);
      KVIDX_READ(*m, "tokenizer_endpoint", &mc.tokenizer_endpoint, where);
      KVIDX_READ(*m, "tokenizer_model", &mc.tokenizer_model, where);
      KVIDX_READ(*m, "engine_hash", &mc.engine_hash, where);
      KVIDX_READ(*m, "engine_hash_seed", &mc.engine_hash_seed, where);
      KVIDX_READ(*m, "hash_check_every", &mc.hash_check_every, where);
      if (!mc.engine_hash.empty() && mc.engine_hash != "sha256_cbor") {
        return absl::InvalidArgumentError(where + ": engine_hash is \"sha256_cbor\" or \"\"");
      }
      known[m].insert("lora_names");
      if (const toml::table* l = (*m)["lora_names"].as_table()) {
        for (const auto& [k, v] : *l) {
          auto name = v.value<std::string>();
          if (!name) return absl::InvalidArgumentError(where + ": lora_names values are strings");
          mc.lora_names[std::strtoll(std::string(k.str()).c_str(), nullptr, 10)] = *name;
        }
      }
      if (mc.name.empty() || mc.block_size == 0) {
        return absl::InvalidArgumentError(where + ": needs a name and a block_size > 0");
      }
      c.models.push_back(std::move(mc));
    }
  }
  if (const toml::array* pubs = root["publisher"].as_array()) {
    for (const toml::node& n : *pubs) {
      const toml::table* p = n.as_table();
      if (p == nullptr)
        return absl::InvalidArgumentError(origin + ": [[publisher]] must be tables");
      PublisherConfig pc;
      std::string where = origin + " [[publisher]]";
      KVIDX_READ(*p, "pod", &pc.pod, where);
      KVIDX_READ(*p, "dp_rank", &pc.dp_rank, where);
      KVIDX_READ(*p, "model", &pc.model, where);
      KVIDX_READ(*p, "endpoint", &pc.endpoint, where);
      KVIDX_READ(*p, "replay_endpoint", &pc.replay_endpoint, where);
      KVIDX_READ(*p, "topic", &pc.topic, where);
      KVIDX_READ(*p, "bind", &pc.bind, where);
      KVIDX_READ(*p, "quota_pairs", &pc.quota_pairs, where);
      KVIDX_READ(*p, "private_engine_hashes", &pc.private_engine_hashes, where);
      std::string dialect = "auto";
      KVIDX_READ(*p, "dialect", &dialect, where);
      auto d = ParseDialect(dialect);
      if (!d)
        return absl::InvalidArgumentError(absl::StrCat(where, ": unknown dialect '", dialect, "'"));
      pc.dialect = *d;
      if (pc.pod.empty() || pc.model.empty() || pc.endpoint.empty()) {
        return absl::InvalidArgumentError(where + ": needs pod, model and endpoint");
      }
      c.publishers.push_back(std::move(pc));
    }
  }
  if (const toml::array* ds = root["discovery"].as_array()) {
    for (const toml::node& n : *ds) {
      const toml::table* t = n.as_table();
      if (t == nullptr)
        return absl::InvalidArgumentError(origin + ": [[discovery]] must be tables");
      DiscoveryConfig d;
      const std::string where = origin + " [[discovery]]";
      std::string dialect = "auto";
      KVIDX_READ(*t, "name", &d.name, where);
      KVIDX_READ(*t, "mode", &d.mode, where);
      KVIDX_READ(*t, "model", &d.model, where);
      KVIDX_READ(*t, "pub_port", &d.pub_port, where);
      KVIDX_READ(*t, "replay_port", &d.replay_port, where);
      KVIDX_READ(*t, "dp_ranks", &d.dp_ranks, where);
      KVIDX_READ(*t, "dp_port_stride", &d.dp_port_stride, where);
      KVIDX_READ(*t, "topic", &d.topic, where);
      KVIDX_READ(*t, "dialect", &dialect, where);
      KVIDX_READ(*t, "interval_ms", &d.interval_ms, where);
      KVIDX_READ(*t, "server", &d.server, where);
      KVIDX_READ(*t, "pod_prefix", &d.pod_prefix, where);
      KVIDX_READ(*t, "drop_after_misses", &d.drop_after_misses, where);
      auto dl = ParseDialect(dialect);
      const uint64_t last = uint64_t{std::max(d.pub_port, d.replay_port)} +
                            uint64_t{d.dp_port_stride} * (d.dp_ranks == 0 ? 0 : d.dp_ranks - 1);
      if (d.name.empty() || d.model.empty() || d.pub_port == 0 || last > 65535 || !dl ||
          d.dp_ranks == 0 || d.interval_ms < 100 || d.drop_after_misses == 0 ||
          (d.mode != "a" && d.mode != "srv")) {
        return absl::InvalidArgumentError(
            where +
            ": needs name, model, pub_port (every rank's ports <= 65535), a known "
            "dialect, dp_ranks >= 1, interval_ms >= 100 and drop_after_misses >= 1");
      }
      d.dialect = *dl;
      if (d.pod_prefix.empty() && d.mode == "a")
        d.pod_prefix = d.name.substr(0, d.name.find('.')) + "-";
      c.discovery.push_back(std::move(d));
    }
  }
  // A misspelt key would silently run with its default (`replay_endpont = ...` runs without
  // replay): every key must be one kvidx reads.
  {
    absl::Status st =
        UnknownKeys(root, {"segment", "ingest", "query", "tls", "model", "publisher", "discovery"},
                    origin, "the top level");
    if (!st.ok()) return st;
    for (const char* section : {"segment", "ingest", "query", "tls"}) {
      if (const toml::table* t = root[section].as_table()) {
        st = UnknownKeys(*t, known[t], origin, absl::StrCat("[", section, "]"));
        if (!st.ok()) return st;
      }
    }
    for (const char* section : {"model", "publisher", "discovery"}) {
      if (const toml::array* a = root[section].as_array()) {
        for (const toml::node& n : *a) {
          const toml::table* t = n.as_table();
          st = UnknownKeys(*t, known[t], origin, absl::StrCat("[[", section, "]]"));
          if (!st.ok()) return st;
        }
      }
    }
  }
  // Publishers and discovered engines must name a configured model.
  auto check_model = [&](const std::string& model, const std::string& who) {
    for (const auto& m : c.models)
      if (m.name == model) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": ", who, " names model '", model, "' which has no [[model]] entry"));
  };
  for (const auto& d : c.discovery)
    KVIDX_RETURN_IF_ERROR(check_model(d.model, "discovery of " + d.name));
  for (const auto& p : c.publishers)
    KVIDX_RETURN_IF_ERROR(check_model(p.model, "publisher " + p.pod));
  // Environment overrides: the AIBrix names, then kvidx's own (which win).
  KVIDX_RETURN_IF_ERROR(ApplyAibrixEnvironment(&c));
  EnvString("KVIDX_SEGMENT", &c.segment);
  EnvString("KVIDX_LISTEN", &c.listen);
  EnvString("KVIDX_METRICS_LISTEN", &c.metrics_listen);
  EnvString("KVIDX_HTTP_LISTEN", &c.http_listen);
  EnvString("KVIDX_ADMIN_LISTEN", &c.admin_listen);
  for (auto [name, field] : {std::pair{"KVIDX_WORKERS", &c.workers},
                             std::pair{"KVIDX_REPLAY_TIMEOUT_MS", &c.replay_timeout_ms},
                             std::pair{"KVIDX_RECONNECT_INITIAL_MS", &c.reconnect_initial_ms},
                             std::pair{"KVIDX_RECONNECT_MAX_MS", &c.reconnect_max_ms},
                             std::pair{"KVIDX_MAX_TOKENS", &c.max_tokens},
                             std::pair{"KVIDX_POLL_TIMEOUT_MS", &c.poll_timeout_ms},
                             std::pair{"KVIDX_ZMQ_LINGER_MS", &c.zmq_linger_ms}}) {
    absl::Status s = EnvNumber(name, field);
    if (!s.ok()) return s;
  }
  KVIDX_RETURN_IF_ERROR(EnvNumber("KVIDX_RCVHWM", &c.rcvhwm));
  KVIDX_RETURN_IF_ERROR(EnvNumber("KVIDX_MAX_BUFFERED_BATCHES", &c.max_buffered_batches));
  if (c.poll_timeout_ms == 0 || c.rcvhwm <= 0 || c.max_buffered_batches == 0) {
    return absl::InvalidArgumentError(
        "poll_timeout_ms, rcvhwm and max_buffered_batches must be positive");
  }
  for (auto [name, field] : {std::pair{"KVIDX_BLOCKS", &c.geometry.blocks},
                             std::pair{"KVIDX_PAIRS", &c.geometry.pairs}}) {
    absl::Status s = EnvNumber(name, field);
    if (!s.ok()) return s;
  }
  if (c.workers == 0 || c.workers > static_cast<uint32_t>(control::kMaxWorkers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("workers must be 1..", control::kMaxWorkers, ", not ", c.workers));
  }
  KVIDX_RETURN_IF_ERROR(CheckSecurity(c, origin));
  return c;
}

absl::StatusOr<Config> LoadConfig(const std::string& path) {
  if (path.empty()) return ParseConfig("", "<defaults>");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseConfig(ss.str(), path);
}

}  // namespace kvidx::config
