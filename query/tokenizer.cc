#include "query/tokenizer.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"

#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "shared/clock.h"

namespace kvidx::query {

namespace http = boost::beast::http;
using nlohmann::json;

namespace {

int RemainingMs(int64_t deadline_ns) {
  const int64_t left = (deadline_ns - MonotonicNanos()) / 1'000'000;
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1'000'000));
}

absl::Status Timeout(const std::string& what) {
  return absl::DeadlineExceededError(absl::StrCat("tokenizer: ", what, " past the deadline"));
}

// A connected socket to host:port, non-blocking, within the deadline.
absl::StatusOr<int> Connect(const std::string& host, const std::string& port, int64_t deadline_ns) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* ai = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &ai) != 0 || ai == nullptr)
    return absl::UnavailableError(absl::StrCat("tokenizer: cannot resolve ", host));
  const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc = fd < 0 ? -1 : connect(fd, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (fd < 0) return absl::UnavailableError("tokenizer: no socket");
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    rc = poll(&p, 1, RemainingMs(deadline_ns));
    int err = 0;
    socklen_t len = sizeof(err);
    if (rc == 0) {
      close(fd);
      return Timeout("connect");
    }
    rc = rc > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0 ? 0 : -1;
  }
  if (rc != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("tokenizer: cannot connect to ", host, ":", port));
  }
  return fd;
}

absl::StatusOr<std::vector<uint32_t>> ParseTokens(const std::string& body, uint32_t max_tokens) {
  json j = json::parse(body, nullptr, false);
  if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array())
    return absl::UnavailableError("tokenizer: the answer has no \"tokens\" array");
  if (j["tokens"].size() > max_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tokenizer: ", j["tokens"].size(), " tokens; the limit is ", max_tokens));
  }
  std::vector<uint32_t> out;
  out.reserve(j["tokens"].size());
  for (const json& t : j["tokens"]) {
    if (!t.is_number_unsigned() || t.get<uint64_t>() > UINT32_MAX)
      return absl::UnavailableError("tokenizer: a token id is not a 32-bit unsigned integer");
    out.push_back(t.get<uint32_t>());
  }
  return out;
}

}  // namespace

Tokenizer::~Tokenizer() {
  for (auto& [key, fds] : idle_)
    for (int fd : fds) close(fd);
}

int Tokenizer::TakeIdle(const std::string& key) {
  std::lock_guard<std::mutex> lock(pool_mu_);
  auto it = idle_.find(key);
  if (it == idle_.end() || it->second.empty()) return -1;
  const int fd = it->second.back();
  it->second.pop_back();
  return fd;
}

void Tokenizer::GiveBack(const std::string& key, int fd) {
  std::lock_guard<std::mutex> lock(pool_mu_);
  std::vector<int>& fds = idle_[key];
  if (fds.size() >= options_.idle_connections) {
    close(fd);
    return;
  }
  fds.push_back(fd);
}

bool Tokenizer::CacheGet(const std::string& key, std::vector<uint32_t>* out) {
  std::lock_guard<std::mutex> lock(cache_mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return false;
  lru_.splice(lru_.begin(), lru_, it->second);
  *out = it->second->second;
  return true;
}

void Tokenizer::CachePut(const std::string& key, const std::vector<uint32_t>& tokens) {
  if (options_.cache_entries == 0) return;
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (auto it = cache_.find(key); it != cache_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  lru_.emplace_front(key, tokens);
  cache_[key] = lru_.begin();
  while (cache_.size() > options_.cache_entries) {
    cache_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

absl::StatusOr<std::string> Tokenizer::PostOnce(const Target& t, int fd, const std::string& request,
                                                int64_t deadline_ns, bool* reusable) {
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n =
        send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN) return absl::UnavailableError("tokenizer: send failed");
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, RemainingMs(deadline_ns)) <= 0) return Timeout("send");
  }
  http::response_parser<http::string_body> parser;
  parser.body_limit(options_.max_response_bytes);
  parser.eager(true);
  std::string buf;
  char chunk[16384];
  while (!parser.is_done()) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, RemainingMs(deadline_ns)) <= 0) return Timeout("answer");
    const ssize_t n = recv(fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n == 0) return absl::UnavailableError("tokenizer: connection closed");
    if (n < 0) {
      if (errno == EAGAIN) continue;
      return absl::UnavailableError("tokenizer: receive failed");
    }
    buf.append(chunk, static_cast<size_t>(n));
    boost::beast::error_code ec;
    const size_t used = parser.put(boost::asio::buffer(buf), ec);
    if (ec == http::error::need_more) {
      ec = {};
    }
    if (ec) {
      return absl::UnavailableError(absl::StrCat("tokenizer: bad HTTP answer: ", ec.message()));
    }
    buf.erase(0, used);
  }
  const auto& res = parser.get();
  *reusable = res.keep_alive() && buf.empty();
  if (res.result_int() != 200) {
    return absl::UnavailableError(
        absl::StrCat("tokenizer ", t.host, ":", t.port, t.path, " answered ", res.result_int()));
  }
  return res.body();
}

absl::StatusOr<std::string> Tokenizer::Post(const Target& t, const std::string& body,
                                            int64_t deadline_ns) {
  const std::string key = t.host + ":" + t.port;
  const std::string request =
      absl::StrCat("POST ", t.path, " HTTP/1.1\r\nHost: ", key,
                   "\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
                   "Content-Length: ",
                   body.size(), "\r\n\r\n", body);
  // A pooled connection the server closed meanwhile fails at once: then one fresh attempt.
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = TakeIdle(key);
    const bool pooled = fd >= 0;
    if (!pooled) {
      auto c = Connect(t.host, t.port, deadline_ns);
      if (!c.ok()) return c.status();
      fd = *c;
    }
    bool reusable = false;
    auto answer = PostOnce(t, fd, request, deadline_ns, &reusable);
    if (answer.ok() && reusable) {
      GiveBack(key, fd);
    } else {
      close(fd);
    }
    if (answer.ok() || !pooled || absl::IsDeadlineExceeded(answer.status())) return answer;
  }
  return absl::UnavailableError("tokenizer: unreachable");
}

absl::StatusOr<Tokenizer::Result> Tokenizer::Tokenize(const std::string& endpoint,
                                                      const std::string& model,
                                                      const std::string* prompt,
                                                      const std::vector<ChatTurn>* messages) {
  json body = {{"model", model}};
  if (prompt != nullptr) {
    body["prompt"] = *prompt;
  } else {
    body["messages"] = json::array();
    for (const ChatTurn& m : *messages)
      body["messages"].push_back({{"role", m.role}, {"content", m.content}});
  }
  const std::string text = body.dump(-1, ' ', false, json::error_handler_t::replace);
  const std::string key = endpoint + '\n' + text;
  Result r;
  if (CacheGet(key, &r.tokens)) {
    hits_.fetch_add(1);
    r.cached = true;
    return r;
  }
  Target t;
  std::string rest = endpoint;
  if (rest.rfind("http://", 0) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer endpoint '", endpoint, "' is not http://HOST:PORT[/PATH]"));
  }
  rest = rest.substr(7);
  const size_t slash = rest.find('/');
  t.path = slash == std::string::npos ? "/tokenize" : rest.substr(slash);
  rest = rest.substr(0, slash);
  const size_t colon = rest.rfind(':');
  t.host = colon == std::string::npos ? rest : rest.substr(0, colon);
  t.port = colon == std::string::npos ? "80" : rest.substr(colon + 1);
  calls_.fetch_add(1);
  auto answer = Post(t, text, MonotonicNanos() + int64_t{options_.timeout_ms} * 1'000'000);
  absl::StatusOr<std::vector<uint32_t>> tokens =
      answer.ok() ? ParseTokens(*answer, options_.max_tokens) : answer.status();
  if (!tokens.ok()) {
    failures_.fetch_add(1);
    return tokens.status();
  }
  r.tokens = std::move(*tokens);
  CachePut(key, r.tokens);
  return r;
}

}  // namespace kvidx::query
