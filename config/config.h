// kvidx configuration: one TOML file (/etc/kvidx/kvidx.toml) with KVIDX_* environment
// overrides. Shared by kvidx-ingest, kvidx-query and kvidxctl. See README.md, "Configuration".
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "config/sizing.h"
#include "index/layout.h"
#include "index/types.h"
#include "wire/vocabulary.h"

namespace kvidx::config {

using wire::Dialect;

struct ModelConfig {
  std::string name;
  uint32_t block_size = 16;
  bool key_by_engine_hash = false;            // token-less dialects (KVBM)
  std::map<int64_t, std::string> lora_names;  // lora_id -> adapter name
  // Prompt-text lookups: the engine's tokenizer ("http://HOST:PORT", vLLM's POST /tokenize)
  // and the model name to send it ("" = name).
  std::string tokenizer_endpoint;
  std::string tokenizer_model;
  // The engines' block hash, to cross-check what they publish (ingest/engine_hash.h): "" (no
  // check) or "sha256_cbor" (vLLM --prefix-caching-hash-algo sha256_cbor); the seed is the
  // engines' PYTHONHASHSEED (vLLM's fixed default when unset); one prompt-starting event in
  // hash_check_every is checked.
  std::string engine_hash;
  std::string engine_hash_seed = "vllm-none-hash";
  uint32_t hash_check_every = 8;
};

struct PublisherConfig {
  std::string pod;
  uint32_t dp_rank = 0;
  std::string model;
  std::string endpoint;         // the engine's PUB endpoint
  std::string replay_endpoint;  // the engine's ROUTER endpoint ("" = no replay)
  std::string topic;            // SUB prefix filter ("" = every topic)
  Dialect dialect = Dialect::kAuto;
  bool bind = false;  // the engine connects to us: kvidx binds the SUB socket
  uint64_t quota_pairs = 0;
  bool private_engine_hashes = false;
};

// [[discovery]]: engines found by resolving a DNS name (a Kubernetes headless service) every
// interval_ms (ingest/discovery.h). Each address becomes a publisher per data-parallel rank:
// pod "<pod_prefix><address, dots as dashes>", rank r at pub_port + r * dp_port_stride (and
// replay_port + r * dp_port_stride; replay_port 0: no replay). An address absent from
// drop_after_misses answers in a row is unregistered; a failed resolution changes nothing.
struct DiscoveryConfig {
  std::string name;
  // "a": a pod per A record of name, named from its address; "srv": a pod per SRV target of
  // name (e.g. _kv._tcp.vllm.ns.svc), named by the target's first label, at the target's
  // address: a new address is an endpoint change of the same pod.
  std::string mode = "a";
  std::string model;
  uint32_t pub_port = 0;
  uint32_t replay_port = 0;
  uint32_t dp_ranks = 1;
  uint32_t dp_port_stride = 0;
  std::string topic;
  Dialect dialect = Dialect::kAuto;
  uint32_t interval_ms = 5000;
  std::string server;      // "HOST:PORT" of the DNS server ("" = /etc/resolv.conf's)
  std::string pod_prefix;  // mode "a": "" = the name's first label and "-"; "srv": "" = none
  uint32_t drop_after_misses = 2;
};

struct Config {
  std::string segment = "kvidx";
  index::Geometry geometry;
  // [segment] workload_*: the geometry's capacities derived from a description (sizing.h).
  Workload workload;
  // The segment is the privilege boundary between ingest (writes) and query (reads): created
  // 0640 by the ingest user, group-readable by the query's; the control area (commands only,
  // never index data) 0660. Both must be owned by segment_owner (a user name or uid; "" = the
  // user running this process) and carry exactly these modes, or attaching refuses them.
  uint32_t segment_mode = 0640;
  uint32_t control_mode = 0660;
  std::string segment_owner;

  uint32_t workers = 2;
  uint32_t reconnect_initial_ms = 1000;  // AIBrix defaults: 1 s initial, 30 s max
  uint32_t reconnect_max_ms = 30000;
  uint32_t replay_timeout_ms = 2000;
  uint32_t idle_probe_ms = 1000;
  // Freshness: an engine silent this long (no batch, no answer to the idle probe) is reported
  // unreachable; after drop_after_ms its residencies are dropped (0: never).
  uint32_t unreachable_after_ms = 10000;
  uint32_t drop_after_ms = 300000;
  // KVBM instances one endpoint may carry; each past the first takes a publisher slot
  // ("<pod>#<n>"), so a publisher inventing instance ids cannot fill the table.
  uint32_t max_kvbm_instances = 4;
  uint32_t poll_timeout_ms = 100;
  uint32_t zmq_linger_ms = 0;  // ZMQ_LINGER of the SUB and replay sockets
  int32_t rcvhwm = 100000;     // the engines' PUB default
  // A batch larger than this is refused (ZeroMQ drops it and the stream sees a gap). A vLLM
  // step of 64 k batched tokens is under 0.5 MiB.
  uint64_t max_payload_bytes = 4u << 20;
  size_t max_buffered_batches = 100000;  // live batches held while a replay runs
  // Per-publisher memory budgets of the owning worker, reported in Stats:
  // - queue_bytes: the ZeroMQ receive queues (high-water mark queue_bytes / max_payload_bytes
  //   messages, at most rcvhwm; a full queue pushes back to the engine, whose PUB drops);
  // - replay_buffer_bytes: live batches held while a replay runs (past it: dropped, counted,
  //   asked for again);
  // - sequence_table_bytes: a sequence-id publisher's sequence table (past it: blocks not
  //   recorded, counted).
  uint64_t queue_bytes = 512u << 20;
  uint64_t replay_buffer_bytes = 64u << 20;
  uint64_t sequence_table_bytes = 64u << 20;
  uint32_t max_adapters_per_model = 64;  // adapter namespaces a model may gain at run time
  bool strict_tags = false;
  // Where kvidx may bind a SUB socket (publishers with bind = true): TCP ports from this list
  // ("5557-5600,6001"), ipc:// paths under this directory. Empty: no binds at all. Never
  // /dev/shm, where the segments live.
  std::string bind_tcp_ports;
  std::string bind_ipc_dir;

  // The router-facing listener: lookups, stats, pods, sequences, WatchEvents, health. Admin
  // calls there are refused with PERMISSION_DENIED.
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9464";
  // HTTP/JSON and WebSocket (query/http_server.h), a router surface; "" = off.
  std::string http_listen;
  uint32_t max_http_connections = 64;
  // The tokenizer client of prompt-text lookups (query/tokenizer.h).
  uint32_t tokenizer_timeout_ms = 2000;
  uint32_t tokenizer_cache_entries = 10000;
  uint32_t tokenizer_connections = 8;  // idle keep-alive connections per endpoint
  // The admin listener: a unix socket (mode admin_socket_mode, group admin_group; "" = this
  // process's group) serving every call, kvidxctl's default. "off": none.
  std::string admin_listen = "unix:/run/kvidx/admin.sock";
  std::string admin_group;
  uint32_t admin_socket_mode = 0660;
  // Admin over TCP, only when set: mutual TLS (tls_cert/tls_key, clients verified against
  // tls_client_ca) and only clients whose certificate names (CN or a SAN) are listed.
  std::string admin_tcp_listen;
  std::vector<std::string> admin_allowed_clients;
  // [tls]: server TLS on the router listener when tls_cert is set (re-read on SIGHUP);
  // tls_require_client_cert makes routers present a certificate signed by tls_client_ca.
  std::string tls_cert, tls_key, tls_client_ca;
  bool tls_require_client_cert = false;
  uint32_t max_tokens = 131072;  // per lookup
  uint32_t max_lookups_per_call = 4096;
  uint32_t max_inflight_rpcs = 256;         // every RPC counts, not only Lookup
  uint64_t max_request_bytes = 64u << 20;   // gRPC refuses larger messages before parsing
  uint32_t max_watch_streams = 16;          // concurrent WatchEvents streams
  uint32_t prediction_ttl_ms = 5000;        // an Announce's default time to live
  uint64_t max_predicted_blocks = 1 << 20;  // predicted blocks live at once
  uint32_t min_stats_interval_ms = 1000;    // a WatchEvents stats interval below this is raised
  // RegisterPublisher may not make kvidx bind a socket, nor name a non-TCP endpoint (an ipc://
  // path could be the segment's own name), unless this is set.
  bool allow_rpc_bind = false;

  std::vector<ModelConfig> models;
  std::vector<PublisherConfig> publishers;
  std::vector<DiscoveryConfig> discovery;

  // What the services log at start-up: settings accepted but ignored (config/aibrix_env.h).
  std::vector<std::string> warnings;
};

// Reads `path` (if non-empty) and applies the AIBRIX_* (config/aibrix_env.h), then KVIDX_*
// environment overrides. INVALID_ARGUMENT
// (with the file, line and key) for bad values; NOT_FOUND if the file is missing.
absl::StatusOr<Config> LoadConfig(const std::string& path);
absl::StatusOr<Config> ParseConfig(std::string_view toml_text, const std::string& origin);

// OK if kvidx may bind a SUB socket on `endpoint` under `c`'s allow-list (bind_tcp_ports,
// bind_ipc_dir); PERMISSION_DENIED naming the rule otherwise. The one check the configuration,
// the admin RPC and the worker executing a registration all apply.
absl::Status CheckBindEndpoint(const Config& c, const std::string& endpoint);

// The uid `owner` names (a user name or a number); "" = this process's effective uid.
absl::StatusOr<uint32_t> ResolveOwner(const std::string& owner);

// The worker (0..workers-1) that owns a publisher: a stable hash of pod and rank.
uint32_t OwnerWorker(const std::string& pod, uint32_t dp_rank, uint32_t workers);

// [[model]] and [[publisher]] tables for `models` and `publishers`, with the keys ParseConfig
// reads (the one schema: kvidx-sim writes its fleet's configuration with it, and a test parses
// it back).
std::string FleetToml(const std::vector<ModelConfig>& models,
                      const std::vector<PublisherConfig>& publishers);

// The adapter name of numeric LoRA id `lora_id` (> 0): its configured name, else "lora-<id>".
// The one rule both the applier (events naming an id) and the query (lookups naming one) use.
std::string AdapterName(const std::map<int64_t, std::string>& names, int64_t lora_id);

// The index registration of a configured (or RPC-registered) publisher whose model is namespace
// `ns`: the one place a PublisherConfig becomes an index::PublisherSpec.
index::PublisherSpec PublisherSpecFor(const PublisherConfig& p, index::NamespaceId ns,
                                      uint32_t workers);

}  // namespace kvidx::config
