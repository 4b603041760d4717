// kvidxctl: inspect and administer kvidx through its gRPC API.
//
//   kvidxctl [--server ADDR] [--config FILE] [--tls-ca F [--tls-cert F --tls-key F]]
//            [--json] [--timeout-ms N] COMMAND [ARGS]
// The server is --server, else $KVIDX_SERVER, else the configuration's admin socket
// (admin_listen of --config / $KVIDX_CONFIG / SYSCONFDIR/kvidx/kvidx.toml), else
// unix:/run/kvidx/admin.sock. The router listener refuses register, unregister and clear.
//     status                         totals, occupancy, ingest counters, per-worker lag
//     pods                           every publisher with its state
//     pod NAME [--dp N]              one publisher and its counters
//     lookup --model M [--lora L] (--tokens 1,2,.. | --tokens-file F | --keys HEX,.. |
//            --kvbm HEX,..)  (KVBM lineage hashes, u128 hex: deepest held position)
//            [--candidates pod,pod] [--max-blocks N]
//     watch [--stats-ms N] [--count N]
//     register --pod P --model M --endpoint E [--replay E] [--topic T] [--dialect D] [--dp N]
//              [--bind] [--quota N]
//     unregister --pod P [--dp N]
//     clear (--pod P [--dp N] | --model M [--lora L] | --all)
//     sequences POD [--dp N]          sequences of a sequence-id publisher
//     sequence POD ID [--dp N]        one sequence and its block keys
//     ping
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "config/config.h"
#include "kvidx.grpc.pb.h"
#include "tools/ctl_text.h"
#include "tools/pod_warnings.h"

namespace {

using kvidx::ctl::Age;
using kvidx::ctl::Printable;
using kvidx::v1::KvIndex;

[[noreturn]] void Usage() {
  std::fprintf(stderr, "kvidxctl: missing or bad arguments (kvidxctl COMMAND --help)\n");
  std::exit(2);
}

struct Opts {
  std::string server;
  std::string config;
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  bool json = false;
  int timeout_ms = 5000;
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // options given, by name ("--dp")
};

// The commands and their options. Option values land in Opts::flags only when given, so each
// command keeps its own defaults.
Opts Parse(int argc, char** argv) {
  Opts o;
  CLI::App app("kvidxctl: inspect and administer kvidx through its gRPC API");
  app.require_subcommand(1);
  app.fallthrough();  // --server, --json and --timeout-ms also after the command
  app.add_option("--server", o.server,
                 "kvidx-query address: unix:PATH or HOST:PORT (env KVIDX_SERVER; default the "
                 "configuration's admin socket)");
  app.add_option("--config", o.config, "configuration naming the admin socket (env KVIDX_CONFIG)");
  app.add_option("--tls-ca", o.tls_ca, "TLS: the CA that signed the server's certificate");
  app.add_option("--tls-cert", o.tls_cert, "mutual TLS: this client's certificate");
  app.add_option("--tls-key", o.tls_key, "mutual TLS: this client's key");
  app.add_option("--tls-server-name", o.tls_server_name, "TLS: the name the server's cert has");
  app.add_flag("--json", o.json, "print answers as JSON");
  app.add_option("--timeout-ms", o.timeout_ms, "deadline of each call");
  std::map<std::string, std::string> values;
  std::vector<CLI::Option*> given;
  std::set<CLI::Option*> flags;  // options without a value: "1" when given
  auto opt = [&](CLI::App* sub, const std::string& name, const std::string& help) {
    given.push_back(sub->add_option(name, values[name], help));
  };
  auto flag = [&](CLI::App* sub, const std::string& name, const std::string& help) {
    given.push_back(sub->add_flag(name, help));
    flags.insert(given.back());
  };
  auto positional = [&](CLI::App* sub, const std::string& name, const std::string& help) {
    sub->add_option(name, o.positional, help)->required();
  };
  app.add_subcommand("status", "totals, occupancy, ingest counters, per-worker lag");
  app.add_subcommand("pods", "every publisher with its state");
  app.add_subcommand("ping", "an empty call");
  CLI::App* pod = app.add_subcommand("pod", "one publisher and its counters");
  positional(pod, "name", "the pod");
  opt(pod, "--dp", "data-parallel rank");
  CLI::App* lookup = app.add_subcommand("lookup", "the longest cached prefix of each pod");
  for (auto [n, h] :
       std::vector<std::pair<std::string, std::string>>{{"--model", "model"},
                                                        {"--lora", "LoRA adapter"},
                                                        {"--tokens", "token ids 1,2,.."},
                                                        {"--tokens-file", "a file of token ids"},
                                                        {"--keys", "block keys HEX,.."},
                                                        {"--kvbm", "KVBM lineage hashes HEX,.."},
                                                        {"--candidates", "pods to consider p,q"},
                                                        {"--max-blocks", "blocks to look at"}}) {
    opt(lookup, n, h);
  }
  CLI::App* watch = app.add_subcommand("watch", "applied events as they happen");
  opt(watch, "--stats-ms", "stats every N ms");
  opt(watch, "--count", "stop after N events");
  CLI::App* reg = app.add_subcommand("register", "register a publisher");
  for (auto [n, h] : std::vector<std::pair<std::string, std::string>>{
           {"--pod", "pod"},
           {"--model", "model"},
           {"--endpoint", "the engine's PUB endpoint"},
           {"--replay", "the engine's ROUTER endpoint"},
           {"--topic", "topic"},
           {"--dialect", "dialect"},
           {"--dp", "data-parallel rank"},
           {"--quota", "pairs"}}) {
    opt(reg, n, h);
  }
  flag(reg, "--bind", "kvidx binds, the engine connects");
  CLI::App* unreg = app.add_subcommand("unregister", "unregister a publisher");
  opt(unreg, "--pod", "pod");
  opt(unreg, "--dp", "data-parallel rank");
  CLI::App* clear = app.add_subcommand("clear", "drop a pod's, a namespace's or every block");
  for (auto [n, h] : std::vector<std::pair<std::string, std::string>>{
           {"--pod", "pod"},
           {"--dp", "data-parallel rank (-1: every one)"},
           {"--model", "model"},
           {"--lora", "LoRA adapter"}}) {
    opt(clear, n, h);
  }
  flag(clear, "--all", "everything");
  CLI::App* seqs = app.add_subcommand("sequences", "sequences of a sequence-id publisher");
  positional(seqs, "pod", "the pod");
  opt(seqs, "--dp", "data-parallel rank");
  CLI::App* seq = app.add_subcommand("sequence", "one sequence and its block keys");
  seq->add_option("pod_and_id", o.positional, "POD ID")->required()->expected(2);
  opt(seq, "--dp", "data-parallel rank");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e) == 0 ? 0 : 2);
  }
  o.command = app.get_subcommands().front()->get_name();
  for (CLI::Option* g : given) {
    if (g->count() == 0) continue;
    const std::string name = "--" + g->get_lnames().front();
    o.flags[name] = flags.count(g) != 0 ? "1" : values[name];
  }
  return o;
}

std::string Flag(const Opts& o, const std::string& k, const std::string& def = "") {
  auto it = o.flags.find(k);
  return it == o.flags.end() ? def : it->second;
}

// --server, else $KVIDX_SERVER, else the configuration's admin socket, else the default one.
std::string ServerOf(const Opts& o) {
  if (!o.server.empty()) return o.server;
  if (const char* env = std::getenv("KVIDX_SERVER")) return env;  // NOLINT(concurrency-mt-unsafe)
  std::string path = o.config;
  if (path.empty()) {
    const char* env = std::getenv("KVIDX_CONFIG");  // NOLINT(concurrency-mt-unsafe)
    path = env != nullptr ? env : KVIDX_SYSCONFDIR "/kvidx/kvidx.toml";
  }
  if (access(path.c_str(), R_OK) == 0) {
    auto c = kvidx::config::LoadConfig(path);
    if (c.ok() && c->admin_listen != "off" && !c->admin_listen.empty()) return c->admin_listen;
    if (c.ok()) return c->listen;
  }
  return "unix:/run/kvidx/admin.sock";
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in) {
    std::fprintf(stderr, "kvidxctl: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  return ss.str();
}

std::shared_ptr<grpc::Channel> Connect(const Opts& o) {
  if (o.tls_ca.empty()) return grpc::CreateChannel(o.server, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFileOrDie(o.tls_ca);
  if (!o.tls_cert.empty()) {
    tls.pem_cert_chain = ReadFileOrDie(o.tls_cert);
    tls.pem_private_key = ReadFileOrDie(o.tls_key);
  }
  grpc::ChannelArguments args;
  if (!o.tls_server_name.empty()) args.SetSslTargetNameOverride(o.tls_server_name);
  return grpc::CreateCustomChannel(o.server, grpc::SslCredentials(tls), args);
}

int Fail(const Opts& o, const grpc::Status& st) {
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE ||
      st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    std::fprintf(stderr, "kvidxctl: cannot reach kvidx-query at %s (%s). Is it running?\n",
                 o.server.c_str(), st.error_message().c_str());
    return 3;
  }
  kvidx::v1::ErrorDetail detail;
  if (detail.ParseFromString(st.error_details()) && !detail.reason().empty() &&
      st.error_message().find(detail.reason()) == std::string::npos) {
    std::fprintf(stderr, "kvidxctl: %s [%s]\n", st.error_message().c_str(),
                 detail.reason().c_str());
  } else {
    std::fprintf(stderr, "kvidxctl: %s\n", st.error_message().c_str());
  }
  return 1;
}

void PrintJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  std::cout << out;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::unique_ptr<grpc::ClientContext> Ctx(const Opts& o) {
  auto c = std::make_unique<grpc::ClientContext>();
  if (o.timeout_ms > 0) {
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(o.timeout_ms));
  }
  return c;
}

int Status(const Opts& o, KvIndex::Stub& stub) {
  kvidx::v1::StatsResponse r;
  grpc::Status st = stub.Stats(Ctx(o).get(), {}, &r);
  if (!st.ok()) return Fail(o, st);
  if (o.json) {
    PrintJson(r);
    return 0;
  }
  std::printf("kvidx at %s: %s\n", o.server.c_str(), r.healthy() ? "healthy" : "UNHEALTHY");
  std::printf("  publishers %u, namespaces %u\n", r.publishers(), r.namespaces());
  std::printf("  blocks %lu, (pod, block) pairs %lu of %lu (%.1f%%), tokens %lu\n",
              (unsigned long)r.blocks(), (unsigned long)r.pairs(), (unsigned long)r.pair_capacity(),
              100 * r.occupancy(), (unsigned long)r.tokens());
  std::printf("  segment %.1f MiB, %.1f bytes per live pair\n", r.segment_bytes() / 1048576.0,
              r.bytes_per_pair());
  std::printf("  pages: %.1f MiB resident, %.1f MiB on 2 MiB pages (%s)\n",
              r.segment_resident_bytes() / 1048576.0, r.segment_huge_page_bytes() / 1048576.0,
              Printable(r.segment_page_policy()).c_str());
  std::printf(
      "  applied: %lu batches, %lu events; evictions %lu; gaps %lu, replays %lu, resyncs %lu\n",
      (unsigned long)r.batches_applied(), (unsigned long)r.events_applied(),
      (unsigned long)r.evictions(), (unsigned long)r.gaps(), (unsigned long)r.replays(),
      (unsigned long)r.resyncs());
  std::printf("  rejected:");
  for (const auto& [k, v] : r.events_rejected()) {
    if (v) std::printf(" %s=%lu", k.c_str(), (unsigned long)v);
  }
  std::printf(" garbage_frames=%lu\n", (unsigned long)r.garbage_frames());
  std::printf("  lookups %lu, hit rate %.1f%%\n", (unsigned long)r.lookups(), 100 * r.hit_rate());
  for (const auto& w : r.workers()) {
    std::printf(
        "  worker %u: %u publishers, lag %s, open gaps %u; memory %.1f of %.0f MiB budgeted, "
        "%lu refused, rss %.1f MiB\n",
        w.worker(), w.publishers(), Age(w.max_last_event_age_ms()).c_str(), w.open_gaps(),
        w.budget_used_bytes() / 1048576.0, w.budget_bytes() / 1048576.0,
        (unsigned long)w.budget_drops(), w.rss_bytes() / 1048576.0);
  }
  return 0;
}

int Pods(const Opts& o, KvIndex::Stub& stub) {
  kvidx::v1::ListPodsResponse r;
  grpc::Status st = stub.ListPods(Ctx(o).get(), {}, &r);
  if (!st.ok()) return Fail(o, st);
  if (o.json) {
    PrintJson(r);
    return 0;
  }
  std::printf("%-16s %3s %-14s %-6s %-9s %10s %10s %6s %6s %8s %s\n", "POD", "DP", "MODEL",
              "WORKER", "STATE", "PAIRS", "LAST_SEQ", "GAPS", "EPOCH", "LAST", "ENDPOINT");
  for (const auto& p : r.pods()) {
    std::printf("%-16s %3u %-14s %-6u %-9s %10lu %10s %6lu %6lu %8s %s\n", p.pod().c_str(),
                p.dp_rank(), p.model().c_str(), p.worker(),
                p.freshness().stream().empty() ? "-" : p.freshness().stream().c_str(),
                (unsigned long)p.pairs(), p.has_seq() ? std::to_string(p.last_seq()).c_str() : "-",
                (unsigned long)p.counters().at("gaps"), (unsigned long)p.freshness().epoch(),
                Age(p.freshness().last_event_age_ms()).c_str(), p.endpoint().c_str());
  }
  kvidx::ctl::PrintPodWarnings(r);
  return 0;
}

int Pod(const Opts& o, KvIndex::Stub& stub) {
  if (o.positional.empty()) Usage();
  kvidx::v1::GetPodRequest req;
  req.set_pod(o.positional[0]);
  req.set_dp_rank(std::atoi(Flag(o, "--dp", "0").c_str()));
  kvidx::v1::Pod p;
  grpc::Status st = stub.GetPod(Ctx(o).get(), req, &p);
  if (!st.ok()) return Fail(o, st);
  if (o.json) {
    PrintJson(p);
    return 0;
  }
  std::printf("%s/%u  model %s  worker %u  dialect %s\n", p.pod().c_str(), p.dp_rank(),
              p.model().c_str(), p.worker(), p.dialect().c_str());
  std::printf("  endpoint %s  replay %s  topic '%s'\n", p.endpoint().c_str(),
              p.replay_endpoint().empty() ? "-" : p.replay_endpoint().c_str(), p.topic().c_str());
  std::printf("  %s, last event %s ago, epoch %lu, last seq %s, pairs %lu\n",
              p.freshness().connected() ? "connected" : "not connected",
              Age(p.freshness().last_event_age_ms()).c_str(), (unsigned long)p.freshness().epoch(),
              p.has_seq() ? std::to_string(p.last_seq()).c_str() : "-", (unsigned long)p.pairs());
  for (const auto& [k, v] :
       std::map<std::string, uint64_t>(p.counters().begin(), p.counters().end())) {
    std::printf("  %-18s %lu\n", k.c_str(), (unsigned long)v);
  }
  return 0;
}

int Lookup(const Opts& o, KvIndex::Stub& stub) {
  kvidx::v1::LookupRequest req;
  auto* q = req.add_queries();
  q->mutable_namespace_()->set_model(Flag(o, "--model"));
  q->mutable_namespace_()->set_lora_name(Flag(o, "--lora"));
  std::string tokens = Flag(o, "--tokens");
  if (!Flag(o, "--tokens-file").empty()) {
    std::ifstream in(Flag(o, "--tokens-file"));
    std::stringstream ss;
    ss << in.rdbuf();
    tokens = ss.str();
    for (char& c : tokens) {
      if (c == ' ' || c == '\n' || c == '[' || c == ']') c = ',';
    }
  }
  if (!tokens.empty()) {
    for (const auto& t : Split(tokens, ','))
      q->mutable_tokens()->add_ids(std::strtoul(t.c_str(), nullptr, 10));
  } else if (!Flag(o, "--keys").empty()) {
    for (const auto& k : Split(Flag(o, "--keys"), ',')) {
      q->mutable_block_keys()->add_keys(std::strtoull(k.c_str(), nullptr, 16));
    }
  } else if (!Flag(o, "--kvbm").empty()) {
    for (const auto& h : Split(Flag(o, "--kvbm"), ','))
      q->mutable_kvbm_hashes()->add_hashes()->set_u128(kvidx::ctl::U128Bytes(h));
  } else {
    Usage();
  }
  for (const auto& c : Split(Flag(o, "--candidates"), ',')) {
    auto* ref = q->add_candidates();
    ref->set_pod(c);
    ref->set_dp_rank(-1);
  }
  q->set_max_blocks(std::atoi(Flag(o, "--max-blocks", "0").c_str()));
  kvidx::v1::LookupResponse r;
  grpc::Status st = stub.Lookup(Ctx(o).get(), req, &r);
  if (!st.ok()) return Fail(o, st);
  if (o.json) {
    PrintJson(r);
    return 0;
  }
  const auto& res = r.results(0);
  if (!res.namespace_known()) {
    std::printf("namespace %s is unknown to kvidx: no pod holds anything of it\n",
                Flag(o, "--model").c_str());
    return 0;
  }
  std::printf("prompt: %u blocks of %u tokens; %d pod(s) hold a prefix%s\n", res.prompt_blocks(),
              res.block_size(), res.matches_size(), res.degraded() ? " (degraded read)" : "");
  if (res.matches_size() == 0) return 0;
  std::printf("  %-16s %3s %8s %8s %5s %5s %5s %6s %8s\n", "POD", "DP", "BLOCKS", "TOKENS", "GPU",
              "CPU", "DISK", "EPOCH", "LAST");
  for (const auto& m : res.matches()) {
    std::printf(
        "  %-16s %3u %8u %8lu %5u %5u %5u %6lu %8s%s%s%s\n", m.pod().c_str(), m.dp_rank(),
        m.matched_blocks(), (unsigned long)m.matched_tokens(), m.gpu_blocks(), m.cpu_blocks(),
        m.disk_blocks(), (unsigned long)m.freshness().epoch(),
        Age(m.freshness().last_event_age_ms()).c_str(),
        m.pod() == res.best().pod() && m.dp_rank() == res.best().dp_rank() ? "  <- best" : "",
        m.kvbm_instance().empty() ? "" : "  KVBM instance ", m.kvbm_instance().c_str());
  }
  return 0;
}

int Watch(const Opts& o, KvIndex::Stub& stub) {
  kvidx::v1::WatchEventsRequest req;
  req.set_stats_interval_ms(std::atoi(Flag(o, "--stats-ms", "0").c_str()));
  long count = std::atol(Flag(o, "--count", "0").c_str());
  grpc::ClientContext ctx;
  auto reader = stub.WatchEvents(&ctx, req);
  kvidx::v1::WatchEvent ev;
  long n = 0;
  while (reader->Read(&ev)) {
    if (o.json) {
      std::string out;
      (void)google::protobuf::util::MessageToJsonString(ev, &out);
      std::cout << out << "\n" << std::flush;
    } else if (ev.has_applied()) {
      const auto& a = ev.applied();
      static const char* const kKinds[] = {"?", "stored", "removed", "cleared"};
      std::printf("%-8s %-16s dp %u  %u blocks  first %016lx  %s%s\n", kKinds[a.kind() & 3],
                  a.pod().c_str(), a.dp_rank(), a.blocks(), (unsigned long)a.first_block_key(),
                  a.model().c_str(),
                  ev.missed() ? (" (missed " + std::to_string(ev.missed()) + ")").c_str() : "");
      std::fflush(stdout);
    } else if (ev.has_stats()) {
      std::printf("stats: %lu blocks, %lu pairs, %lu batches applied\n",
                  (unsigned long)ev.stats().blocks(), (unsigned long)ev.stats().pairs(),
                  (unsigned long)ev.stats().batches_applied());
      std::fflush(stdout);
    }
    if (count > 0 && ++n >= count) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) return Fail(o, st);
  return 0;
}

int Register(const Opts& o, KvIndex::Stub& stub) {
  kvidx::v1::RegisterPublisherRequest req;
  req.set_pod(Flag(o, "--pod"));
  req.set_model(Flag(o, "--model"));
  req.set_endpoint(Flag(o, "--endpoint"));
  req.set_replay_endpoint(Flag(o, "--replay"));
  req.set_topic(Flag(o, "--topic"));
  req.set_dialect(Flag(o, "--dialect", "auto"));
  req.set_dp_rank(std::atoi(Flag(o, "--dp", "0").c_str()));
  req.set_bind(!Flag(o, "--bind").empty());
  req.set_quota_pairs(std::strtoull(Flag(o, "--quota", "0").c_str(), nullptr, 10));
  kvidx::v1::Pod p;
  grpc::Status st = stub.RegisterPublisher(Ctx(o).get(), req, &p);
  if (!st.ok()) return Fail(o, st);
  if (o.json)
    PrintJson(p);
  else
    std::printf("registered %s/%u (worker %u)\n", p.pod().c_str(), p.dp_rank(), p.worker());
  return 0;
}

int Unregister(const Opts& o, KvIndex::Stub& stub) {
  kvidx::v1::UnregisterPublisherRequest req;
  req.set_pod(Flag(o, "--pod"));
  req.set_dp_rank(std::atoi(Flag(o, "--dp", "0").c_str()));
  kvidx::v1::UnregisterPublisherResponse r;
  grpc::Status st = stub.UnregisterPublisher(Ctx(o).get(), req, &r);
  if (!st.ok()) return Fail(o, st);
  if (o.json)
    PrintJson(r);
  else
    std::printf("unregistered %s, dropped %lu pairs\n", req.pod().c_str(),
                (unsigned long)r.pairs_dropped());
  return 0;
}

int Sequences(const Opts& o, KvIndex::Stub& stub) {
  if (o.positional.empty()) Usage();
  kvidx::v1::ListSequencesRequest req;
  req.set_pod(o.positional[0]);
  req.set_dp_rank(std::atoi(Flag(o, "--dp", "0").c_str()));
  kvidx::v1::ListSequencesResponse r;
  grpc::Status st = stub.ListSequences(Ctx(o).get(), req, &r);
  if (!st.ok()) return Fail(o, st);
  if (o.json) {
    PrintJson(r);
    return 0;
  }
  std::printf("%-12s %-8s %-9s %6s  %s\n", "SEQUENCE", "STATE", "RESULT", "BLOCKS", "REQUEST");
  for (const auto& s : r.sequences()) {
    std::printf("%-12ld %-8s %-9s %6u  %s\n", static_cast<long>(s.sequence_id()),
                s.finished() ? "finished" : "running",
                s.finished() ? (s.succeeded() ? "ok" : "failed") : "-", s.stored_blocks(),
                Printable(s.request_id()).c_str());
  }
  if (r.truncated()) std::printf("(truncated)\n");
  return 0;
}

int Sequence(const Opts& o, KvIndex::Stub& stub) {
  if (o.positional.size() < 2) Usage();
  kvidx::v1::GetSequenceRequest req;
  req.set_pod(o.positional[0]);
  req.set_sequence_id(std::strtoll(o.positional[1].c_str(), nullptr, 10));
  req.set_dp_rank(std::atoi(Flag(o, "--dp", "0").c_str()));
  kvidx::v1::Sequence s;
  grpc::Status st = stub.GetSequence(Ctx(o).get(), req, &s);
  if (!st.ok()) return Fail(o, st);
  if (o.json) {
    PrintJson(s);
    return 0;
  }
  std::printf("sequence %ld of %s: %s, %u blocks stored, request '%s'\n",
              static_cast<long>(s.sequence_id()), s.pod().c_str(),
              s.finished() ? (s.succeeded() ? "finished ok" : "finished, failed") : "running",
              s.stored_blocks(), Printable(s.request_id()).c_str());
  for (int i = 0; i < s.block_keys_size(); ++i) {
    std::printf("  block %d  %016lx\n", i, static_cast<unsigned long>(s.block_keys(i)));
  }
  return 0;
}

int Clear(const Opts& o, KvIndex::Stub& stub) {
  kvidx::v1::ClearRequest req;
  if (!Flag(o, "--pod").empty()) {
    req.mutable_pod()->set_pod(Flag(o, "--pod"));
    req.mutable_pod()->set_dp_rank(std::atoi(Flag(o, "--dp", "-1").c_str()));
  } else if (!Flag(o, "--model").empty()) {
    req.mutable_namespace_()->set_model(Flag(o, "--model"));
    req.mutable_namespace_()->set_lora_name(Flag(o, "--lora"));
  } else if (!Flag(o, "--all").empty()) {
    req.set_all(true);
  } else {
    Usage();
  }
  kvidx::v1::ClearResponse r;
  grpc::Status st = stub.Clear(Ctx(o).get(), req, &r);
  if (!st.ok()) return Fail(o, st);
  if (o.json)
    PrintJson(r);
  else
    std::printf("cleared: %u publishers, %lu pairs, %lu blocks\n", r.publishers_cleared(),
                (unsigned long)r.pairs_cleared(), (unsigned long)r.blocks_cleared());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Opts o = Parse(argc, argv);
  o.server = ServerOf(o);
  auto channel = Connect(o);
  auto stub = KvIndex::NewStub(channel);
  if (o.command == "status") return Status(o, *stub);
  if (o.command == "pods") return Pods(o, *stub);
  if (o.command == "pod") return Pod(o, *stub);
  if (o.command == "lookup") return Lookup(o, *stub);
  if (o.command == "watch") return Watch(o, *stub);
  if (o.command == "register") return Register(o, *stub);
  if (o.command == "unregister") return Unregister(o, *stub);
  if (o.command == "clear") return Clear(o, *stub);
  if (o.command == "sequences") return Sequences(o, *stub);
  if (o.command == "sequence") return Sequence(o, *stub);
  if (o.command == "ping") {
    kvidx::v1::PingResponse r;
    grpc::Status st = stub->Ping(Ctx(o).get(), {}, &r);
    if (!st.ok()) return Fail(o, st);
    std::printf("pong from %s\n", o.server.c_str());
    return 0;
  }
  Usage();
}
