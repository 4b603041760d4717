// The query process's HTTP/JSON and WebSocket listener (config `http_listen`, off by default),
// with Boost.Beast: the AIBrix KV event sync routes (../shared/spec/aibrix-surface.md) and
// kvidx's own, whose bodies are the canonical protobuf JSON mapping of the gRPC messages
// (one schema for both). A router surface: calls that change state are refused (403,
// ADMIN_ONLY) as on the router gRPC listener.
//
//   GET  /healthz                        {"status": "SERVING"} (503 NOT_SERVING if unhealthy)
//   POST /v1/lookup                      LookupRequest -> LookupResponse
//   GET  /v1/stats                       StatsResponse
//   GET  /v1/pods                        ListPodsResponse
//   GET  /v1/pods/{pod}[?dp_rank=N]      Pod
//   GET  /v1/events[?stats_interval_ms=N]   WebSocket: one WatchEvent per text message
//   GET  /api/v1/cache/status            AIBrix status
//   GET  /api/v1/cache/sequences         AIBrix sequence list
//   GET  /api/v1/cache/sequences/{id}[?pod=P]   one sequence (404, code 1007, if unknown)
//   POST /api/v1/cache/clear             403 ADMIN_ONLY (admin surfaces only)
//   GET  /api/v1/cache/events            WebSocket: AIBrix {type, timestamp, data} messages
//
// Errors: {"error": {"code": <AIBrix code or 0>, "reason": "...", "message": "...",
// "status": "<gRPC code name>"}} with the HTTP status of the gRPC code (query/errors.h).
//
// One thread per connection, at most `max_connections` (past it: 503); a connection idle for
// `idle_timeout_ms` is closed; bodies past `max_body_bytes` are refused (413).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

#include "query/service.h"

namespace kvidx::query {

struct HttpOptions {
  uint32_t max_connections = 64;
  uint32_t idle_timeout_ms = 30000;
  uint64_t max_body_bytes = 64u << 20;
};

// A request as the routes see it.
struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query string
  std::map<std::string, std::string> query;
  std::string body;
};
struct HttpResponse {
  int status = 200;
  std::string body;  // JSON
};

// The routes (query/http_routes.cc), transport aside: what the listener answers `req` with.
HttpResponse Route(KvIndexService* service, const HttpRequest& req);
// A WebSocket route's messages: kAibrix for /api/v1/cache/events, kProto for /v1/events;
// kNone if `path` is not a WebSocket route.
enum class EventFormat { kNone, kProto, kAibrix };
EventFormat WebSocketRoute(const std::string& path);
// One WatchEvent as a text message of `format`.
std::string EventMessage(const KvIndexService& service, const v1::WatchEvent& ev,
                         EventFormat format);
// The JSON error body and status of a gRPC error.
HttpResponse ErrorResponse(const grpc::Status& st);

class HttpServer {
 public:
  // Listens on `address` ("HOST:PORT"; port 0 takes a free one).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& address,
                                                           KvIndexService* service,
                                                           const HttpOptions& options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // Stops accepting, closes every connection (WebSockets included) and joins their threads.
  void Shutdown();

 private:
  HttpServer(KvIndexService* service, const HttpOptions& options, int fd, int port);
  void AcceptLoop();
  void Serve(int fd);

  KvIndexService* service_;
  HttpOptions options_;
  int listen_fd_;
  int port_;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::map<int, std::thread> connections_;  // fd -> its thread
  std::vector<std::thread> finished_;       // threads whose connection ended, to join
};

}  // namespace kvidx::query
