#include "query/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include "shared/log.h"

namespace kvidx::query {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace websocket = boost::beast::websocket;
using Tcp = asio::ip::tcp;

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %XX (and + in a query) decoded; a malformed escape is kept as it is.
std::string PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 && HexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else if (s[i] == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The request target split into its path and query parameters.
void SplitTarget(std::string_view target, HttpRequest* req) {
  const size_t q = target.find('?');
  req->path = PercentDecode(target.substr(0, q), false);
  if (q == std::string_view::npos) return;
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    std::string_view item = rest.substr(0, amp);
    const size_t eq = item.find('=');
    req->query[PercentDecode(item.substr(0, eq), true)] =
        eq == std::string_view::npos ? "" : PercentDecode(item.substr(eq + 1), true);
    if (amp == std::string_view::npos) break;
    rest.remove_prefix(amp + 1);
  }
}

void SetTimeouts(int fd, uint32_t ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

http::response<http::string_body> ToBeast(const HttpResponse& r, unsigned version,
                                          bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(r.status), version};
  res.set(http::field::server, "kvidx");
  res.set(http::field::content_type, "application/json");
  res.keep_alive(keep_alive);
  res.body() = r.body;
  res.prepare_payload();
  return res;
}

absl::StatusOr<int> Listen(const std::string& address, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat("http_listen '", address, "' is not HOST:PORT"));
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* ai = nullptr;
  const std::string service = address.substr(colon + 1);
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &ai) != 0 ||
      ai == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("http_listen '", address, "': cannot resolve"));
  }
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool ok = fd >= 0 && bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0;
  freeaddrinfo(ai);
  if (!ok) {
    const int err = errno;
    if (fd >= 0) close(fd);
    return absl::UnavailableError(
        absl::StrCat("http_listen ", address, ": cannot listen: errno ", err));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  *port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return fd;
}

// Client messages are read (and dropped) only when some are waiting: a close frame, or the
// peer gone, ends the stream.
bool PeerClosed(websocket::stream<Tcp::socket&>& ws, int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  beast::flat_buffer in;
  beast::error_code ec;
  ws.read(in, ec);
  return static_cast<bool>(ec);
}

// A WebSocket route: the service's event loop, one text message per event.
void ServeWebSocket(KvIndexService* service, const std::atomic<bool>& stopping, Tcp::socket& sock,
                    const http::request<http::string_body>& upgrade, const HttpRequest& r,
                    EventFormat format) {
  websocket::stream<Tcp::socket&> ws(sock);
  beast::error_code ec;
  ws.accept(upgrade, ec);
  if (ec) return;
  ws.text(true);
  v1::WatchEventsRequest req;
  uint32_t interval = format == EventFormat::kAibrix ? 10000 : 0;
  if (auto it = r.query.find("stats_interval_ms"); it != r.query.end())
    (void)absl::SimpleAtoi(it->second, &interval);
  req.set_stats_interval_ms(interval);
  const int fd = sock.native_handle();
  grpc::Status st = service->Watch(
      req, [&] { return stopping.load() || PeerClosed(ws, fd); },
      [&](const v1::WatchEvent& ev) {
        const std::string msg = EventMessage(*service, ev, format);
        ws.write(asio::buffer(msg), ec);
        return !ec;
      });
  if (!st.ok()) {
    // Past max_watch_streams: the error as the one message, then a close with "try again".
    const std::string msg = ErrorResponse(st).body;
    ws.write(asio::buffer(msg), ec);
    ws.close(websocket::close_reason(websocket::close_code::try_again_later), ec);
    return;
  }
  ws.close(websocket::close_code::going_away, ec);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address,
                                                              KvIndexService* service,
                                                              const HttpOptions& options) {
  int port = 0;
  auto fd = Listen(address, &port);
  if (!fd.ok()) return fd.status();
  std::unique_ptr<HttpServer> s(new HttpServer(service, options, *fd, port));
  s->acceptor_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

HttpServer::HttpServer(KvIndexService* service, const HttpOptions& options, int fd, int port)
    : service_(service), options_(options), listen_fd_(fd), port_(port) {}

HttpServer::~HttpServer() { Shutdown(); }

void HttpServer::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    const int ready = poll(&p, 1, 200);
    {
      std::vector<std::thread> done;
      {
        std::lock_guard<std::mutex> lock(mu_);
        done.swap(finished_);
      }
      for (std::thread& t : done) t.join();
    }
    if (ready <= 0 || stopping_.load()) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    SetTimeouts(fd, options_.idle_timeout_ms);
    std::lock_guard<std::mutex> lock(mu_);
    if (connections_.size() >= options_.max_connections) {
      static constexpr char kBusy[] =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
          "Connection: close\r\nContent-Length: 101\r\n\r\n"
          "{\"error\":{\"code\":0,\"reason\":\"TOO_MANY_CONNECTIONS\",\"message\":\"try again\","
          "\"status\":\"UNAVAILABLE\"}}";
      (void)!send(fd, kBusy, sizeof(kBusy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      close(fd);
      continue;
    }
    connections_.emplace(fd, std::thread([this, fd] { Serve(fd); }));
  }
}

void HttpServer::Serve(int fd) {
  try {
    asio::io_context io;
    Tcp::socket sock(io);
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    getsockname(fd, reinterpret_cast<sockaddr*>(&peer), &len);
    sock.assign(peer.ss_family == AF_INET6 ? Tcp::v6() : Tcp::v4(), dup(fd));
    beast::flat_buffer buffer;
    while (!stopping_.load()) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(options_.max_body_bytes);
      parser.header_limit(64 * 1024);
      beast::error_code ec;
      http::read(sock, buffer, parser, ec);
      if (ec == http::error::body_limit) {
        HttpResponse too_big{413, R"({"error":{"code":0,"reason":"BODY_TOO_LARGE","message":)"
                                  R"("the body is larger than max_request_bytes","status":)"
                                  R"("INVALID_ARGUMENT"}})"};
        http::write(sock, ToBeast(too_big, 11, false), ec);
        break;
      }
      if (ec) break;
      http::request<http::string_body> req = parser.release();
      HttpRequest r;
      r.method = std::string(req.method_string());
      SplitTarget(std::string_view(req.target().data(), req.target().size()), &r);
      if (websocket::is_upgrade(req)) {
        const EventFormat format = WebSocketRoute(r.path);
        if (format != EventFormat::kNone) {
          ServeWebSocket(service_, stopping_, sock, req, r, format);
          break;
        }
      }
      r.body = std::move(req.body());
      const HttpResponse answer = Route(service_, r);
      http::write(sock, ToBeast(answer, req.version(), req.keep_alive()), ec);
      if (ec || !req.keep_alive()) break;
    }
  } catch (const std::exception& e) {
    KVIDX_LOG_DEBUG("http connection: %s", e.what());
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = connections_.find(fd);
  if (it != connections_.end()) {
    finished_.push_back(std::move(it->second));
    connections_.erase(it);
  }
  close(fd);
}

void HttpServer::Shutdown() {
  if (stopping_.exchange(true)) return;
  if (acceptor_.joinable()) acceptor_.join();
  close(listen_fd_);
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Blocked reads and writes return; WebSocket loops see stopping_.
    for (auto& [fd, t] : connections_) ::shutdown(fd, SHUT_RDWR);
  }
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (std::thread& t : finished_) threads.push_back(std::move(t));
      finished_.clear();
      if (connections_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace kvidx::query
