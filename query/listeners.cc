#include "query/listeners.h"

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"

#include "shared/log.h"
#include "shared/status.h"

namespace kvidx::query {

struct Listeners::Listener {
  Surface surface;
  std::string address;  // as bound: a TCP listener's port is the one it got
  bool tls = false;
  std::unique_ptr<v1::KvIndex::Service> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

bool IsAdminMethod(std::string_view method) {
  return method == "RegisterPublisher" || method == "UnregisterPublisher" || method == "Clear";
}

namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in || ss.str().empty()) {
    return absl::FailedPreconditionError(absl::StrCat("[tls] ", what, ": cannot read ", path));
  }
  return ss.str();
}

// The certificate names of the caller: its CN and every SAN (gRPC's x509 properties).
std::vector<std::string> PeerNames(const grpc::ServerContextBase& ctx) {
  std::vector<std::string> names;
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (!auth) return names;
  for (const char* property : {"x509_common_name", "x509_subject_alternative_name"}) {
    for (const grpc::string_ref& v : auth->FindPropertyValues(property))
      names.emplace_back(v.data(), v.size());
  }
  return names;
}

// Lookup's request and response on one protobuf arena per call, with a first block inline:
// an answer of many pods (a PodMatch, its strings and its Freshness each) costs no malloc.
// Holders are pooled (at most kPooled kept): a fresh 32 KiB holder per call made glibc trim
// and re-grow its thread heaps, and every trim is a madvise with a TLB shootdown.
class ArenaLookupAllocator final
    : public grpc::MessageAllocator<v1::LookupRequest, v1::LookupResponse> {
  class Holder final : public grpc::MessageHolder<v1::LookupRequest, v1::LookupResponse> {
   public:
    explicit Holder(ArenaLookupAllocator* pool) : pool_(pool), arena_(Options(first_block_)) {
      Reset();
    }
    void Reset() {
      arena_.Reset();
      set_request(google::protobuf::Arena::CreateMessage<v1::LookupRequest>(&arena_));
      set_response(google::protobuf::Arena::CreateMessage<v1::LookupResponse>(&arena_));
    }
    void Release() override { pool_->Put(this); }

   private:
    static google::protobuf::ArenaOptions Options(char* block) {
      google::protobuf::ArenaOptions o;
      o.initial_block = block;
      o.initial_block_size = sizeof(first_block_);
      o.start_block_size = size_t{64} << 10;
      o.max_block_size = size_t{1} << 20;
      return o;
    }
    ArenaLookupAllocator* pool_;
    alignas(16) char first_block_[32 * 1024];
    google::protobuf::Arena arena_;
  };
  static constexpr size_t kPooled = 64;

 public:
  ~ArenaLookupAllocator() override {
    for (Holder* h : free_) delete h;
  }
  grpc::MessageHolder<v1::LookupRequest, v1::LookupResponse>* AllocateMessages() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        Holder* h = free_.back();
        free_.pop_back();
        return h;
      }
    }
    return new Holder(this);
  }

 private:
  void Put(Holder* h) {
    h->Reset();
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < kPooled) {
      free_.push_back(h);
      return;
    }
    delete h;
  }
  std::mutex mu_;
  std::vector<Holder*> free_;
};

// Does any query of the call need the tokenizer (a blocking HTTP call)?
bool NeedsTokenizer(const v1::LookupRequest& req) {
  for (const auto& q : req.queries()) {
    if (q.input_case() == v1::LookupQuery::kPrompt || q.input_case() == v1::LookupQuery::kMessages)
      return true;
  }
  return false;
}

// Every KvIndex call of one surface: admitted (then answered by the one KvIndexService) or
// refused with PERMISSION_DENIED and the reason. Lookup and Ping, the routers' hot calls, use
// gRPC's callback API (no hand-off to a sync worker thread; Lookup's messages on an arena).
class SurfaceService final : public v1::KvIndex::WithCallbackMethod_Lookup<
                                 v1::KvIndex::WithCallbackMethod_Ping<v1::KvIndex::Service>> {
 public:
  SurfaceService(Surface surface, const config::Config& config, KvIndexService* impl)
      : surface_(surface), config_(config), impl_(impl) {
    SetMessageAllocatorFor_Lookup(&allocator_);
  }

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx, const v1::LookupRequest* req,
                                   v1::LookupResponse* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    grpc::Status admitted = Admit(*ctx, "Lookup");
    if (!admitted.ok()) {
      reactor->Finish(admitted);
    } else if (NeedsTokenizer(*req)) {
      // A callback must not block gRPC's threads: a call that waits on the tokenizer is
      // answered from its own thread (the tokenizer's deadline bounds it).
      std::thread([this, reactor, req, resp] {
        reactor->Finish(impl_->Lookup(nullptr, req, resp));
      }).detach();
    } else {
      reactor->Finish(impl_->Lookup(nullptr, req, resp));
    }
    return reactor;
  }
  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* ctx, const v1::PingRequest* req,
                                 v1::PingResponse* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    grpc::Status admitted = Admit(*ctx, "Ping");
    reactor->Finish(admitted.ok() ? impl_->Ping(nullptr, req, resp) : admitted);
    return reactor;
  }

#define KVIDX_FORWARD(Method, Req, Resp)                                                       \
  grpc::Status Method(grpc::ServerContext* ctx, const v1::Req* req, v1::Resp* resp) override { \
    grpc::Status admitted = Admit(*ctx, #Method);                                              \
    return admitted.ok() ? impl_->Method(ctx, req, resp) : admitted;                           \
  }
  KVIDX_FORWARD(Stats, StatsRequest, StatsResponse)
  KVIDX_FORWARD(ListPods, ListPodsRequest, ListPodsResponse)
  KVIDX_FORWARD(GetPod, GetPodRequest, Pod)
  KVIDX_FORWARD(RegisterPublisher, RegisterPublisherRequest, Pod)
  KVIDX_FORWARD(UnregisterPublisher, UnregisterPublisherRequest, UnregisterPublisherResponse)
  KVIDX_FORWARD(Clear, ClearRequest, ClearResponse)
  KVIDX_FORWARD(ListSequences, ListSequencesRequest, ListSequencesResponse)
  KVIDX_FORWARD(GetSequence, GetSequenceRequest, Sequence)
  KVIDX_FORWARD(Announce, AnnounceRequest, AnnounceResponse)
#undef KVIDX_FORWARD
  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchEventsRequest* req,
                           grpc::ServerWriter<v1::WatchEvent>* writer) override {
    grpc::Status admitted = Admit(*ctx, "WatchEvents");
    return admitted.ok() ? impl_->WatchEvents(ctx, req, writer) : admitted;
  }

 private:
  grpc::Status Admit(const grpc::ServerContextBase& ctx, std::string_view method) const {
    if (surface_ == Surface::kRouter && IsAdminMethod(method)) {
      impl_->CountPermissionDenied();
      return Error(grpc::StatusCode::PERMISSION_DENIED, "ADMIN_ONLY",
                   absl::StrCat(std::string(method),
                                " changes the index: it is served only on the admin listener (",
                                config_.admin_listen, config_.admin_tcp_listen.empty() ? "" : ", ",
                                config_.admin_tcp_listen, "), not on the router listener"));
    }
    if (surface_ == Surface::kAdminTls) {
      std::vector<std::string> names = PeerNames(ctx);
      for (const std::string& n : names) {
        if (std::find(config_.admin_allowed_clients.begin(), config_.admin_allowed_clients.end(),
                      n) != config_.admin_allowed_clients.end()) {
          return grpc::Status::OK;
        }
      }
      impl_->CountPermissionDenied();
      std::string who = names.empty() ? "no certificate name" : names.front();
      return Error(grpc::StatusCode::PERMISSION_DENIED, "CLIENT_NOT_ALLOWED",
                   absl::StrCat("client certificate '", who,
                                "' is not in admin_allowed_clients of the admin listener"));
    }
    return grpc::Status::OK;
  }

  Surface surface_;
  const config::Config& config_;
  KvIndexService* impl_;
  ArenaLookupAllocator allocator_;
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(Surface surface,
                                                                     const config::Config& c,
                                                                     bool* tls) {
  *tls = false;
  if (surface == Surface::kAdmin || (surface == Surface::kRouter && c.tls_cert.empty())) {
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions opts;
  KVIDX_ASSIGN_OR_RETURN(std::string cert, ReadPem(c.tls_cert, "cert"));
  KVIDX_ASSIGN_OR_RETURN(std::string key, ReadPem(c.tls_key, "key"));
  opts.pem_key_cert_pairs.push_back({key, cert});
  if (!c.tls_client_ca.empty()) {
    KVIDX_ASSIGN_OR_RETURN(opts.pem_root_certs, ReadPem(c.tls_client_ca, "client_ca"));
  }
  opts.client_certificate_request = surface == Surface::kAdminTls || c.tls_require_client_cert
                                        ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                    : c.tls_client_ca.empty()
                                        ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                        : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  *tls = true;
  return grpc::SslServerCredentials(opts);
}

// "host:port" with the port replaced (IPv6 hosts keep their brackets).
std::string WithPort(const std::string& address, int port) {
  return absl::StrCat(address.substr(0, address.rfind(':')), ":", port);
}

// The group id `name` names (a group name or a number).
absl::StatusOr<gid_t> ResolveGroup(const std::string& name) {
  char* end = nullptr;
  unsigned long n = std::strtoul(name.c_str(), &end, 10);
  if (!name.empty() && *end == '\0') return static_cast<gid_t>(n);
  std::vector<char> buf(16384);
  group g{};
  group* found = nullptr;
  if (getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("admin_group '", name, "' is not a group"));
  }
  return found->gr_gid;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Listeners::Listener>> Listeners::StartOne(
    Surface surface, const std::string& address) {
  auto l = std::make_unique<Listener>();
  l->surface = surface;
  KVIDX_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds,
                         Credentials(surface, config_, &l->tls));
  l->service = std::make_unique<SurfaceService>(surface, config_, service_);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, creds, &l->port);
  builder.RegisterService(l->service.get());
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<uint64_t>(config_.max_request_bytes, INT32_MAX)));
  const bool unix_socket = address.rfind("unix:", 0) == 0;
  if (unix_socket) {
    // The socket is created with the mode the umask leaves: make that the configured one, so
    // that it is never wider, not even between bind and chmod.
    mode_t old = umask(static_cast<mode_t>(~config_.admin_socket_mode & 0777));
    l->server = builder.BuildAndStart();
    umask(old);
  } else {
    l->server = builder.BuildAndStart();
  }
  if (!l->server || (!unix_socket && l->port == 0)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address,
        unix_socket ? " (does its directory exist? set [query] admin_listen, or \"off\")" : ""));
  }
  if (unix_socket) {
    std::string path = address.substr(5);
    if (path.rfind("//", 0) == 0) path = path.substr(2);
    if (chmod(path.c_str(), static_cast<mode_t>(config_.admin_socket_mode)) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("chmod ", path, " failed"));
    }
    if (!config_.admin_group.empty()) {
      KVIDX_ASSIGN_OR_RETURN(gid_t gid, ResolveGroup(config_.admin_group));
      if (chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot give ", path, " to group ", config_.admin_group));
      }
    }
    l->address = address;
  } else {
    l->address = WithPort(address, l->port);
  }
  return l;
}

Listeners::Listeners(const config::Config& config, KvIndexService* service)
    : config_(config), service_(service) {}

absl::StatusOr<std::unique_ptr<Listeners>> Listeners::Start(const config::Config& config,
                                                            KvIndexService* service) {
  std::unique_ptr<Listeners> ls(new Listeners(config, service));
  auto add = [&](Surface surface, const std::string& address) -> absl::Status {
    KVIDX_ASSIGN_OR_RETURN(std::unique_ptr<Listener> l, ls->StartOne(surface, address));
    ls->listeners_.push_back(std::move(l));
    return absl::OkStatus();
  };
  KVIDX_RETURN_IF_ERROR(add(Surface::kRouter, config.listen));
  if (config.admin_listen != "off" && !config.admin_listen.empty()) {
    if (config.admin_listen.rfind("unix:", 0) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("admin_listen must be a unix: socket, not ", config.admin_listen,
                       " (admin over TCP is admin_tcp_listen, with mutual TLS)"));
    }
    KVIDX_RETURN_IF_ERROR(add(Surface::kAdmin, config.admin_listen));
  }
  if (!config.admin_tcp_listen.empty()) {
    KVIDX_RETURN_IF_ERROR(add(Surface::kAdminTls, config.admin_tcp_listen));
  }
  return ls;
}

absl::Status Listeners::ReloadTls() {
  absl::Status result = absl::OkStatus();
  for (std::unique_ptr<Listener>& l : listeners_) {
    if (!l->tls) continue;
    auto next = StartOne(l->surface, l->address);  // the same port: SO_REUSEPORT
    if (!next.ok()) {
      KVIDX_LOG_ERROR("tls reload on %s failed, keeping the old certificates: %s",
                      l->address.c_str(), next.status().ToString().c_str());
      result = next.status();
      continue;
    }
    l->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    l = std::move(*next);
    KVIDX_LOG_INFO("tls reloaded on %s", l->address.c_str());
  }
  return result;
}

void Listeners::Shutdown() {
  for (auto& l : listeners_)
    l->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

Listeners::~Listeners() { Shutdown(); }

int Listeners::router_port() const { return listeners_.front()->port; }

int Listeners::admin_tcp_port() const {
  for (const auto& l : listeners_)
    if (l->surface == Surface::kAdminTls) return l->port;
  return 0;
}

}  // namespace kvidx::query
