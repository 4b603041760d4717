// Prompt text -> token ids through the engine's tokenizer: vLLM's `POST /tokenize`
// ({"model", "prompt"} or {"model", "messages"} -> {"tokens": [...]}), for lookups that carry
// prompt text (a model whose configuration names tokenizer_endpoint).
//
// Keep-alive connections are pooled per endpoint (at most `idle_connections` idle each); every
// call has a deadline (connect, send and receive together); answers are kept in a bounded LRU
// cache keyed by endpoint, model and the request body. Thread-safe.
// Errors: DEADLINE_EXCEEDED past the deadline, UNAVAILABLE when the tokenizer cannot be reached
// or answers other than 200 with tokens, RESOURCE_EXHAUSTED for more than `max_tokens`.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace kvidx::query {

struct TokenizerOptions {
  uint32_t timeout_ms = 2000;
  size_t cache_entries = 10000;
  size_t idle_connections = 8;
  uint32_t max_tokens = 131072;
  uint64_t max_response_bytes = 16u << 20;
};

struct ChatTurn {
  std::string role, content;
};

class Tokenizer {
 public:
  explicit Tokenizer(const TokenizerOptions& options) : options_(options) {}
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  struct Result {
    std::vector<uint32_t> tokens;
    bool cached = false;  // answered from the cache, no call made
  };
  // `endpoint`: "http://HOST:PORT" (the path /tokenize is added) or "http://HOST:PORT/PATH".
  // Exactly one of `prompt` (non-null) and `messages` (non-null) is given.
  absl::StatusOr<Result> Tokenize(const std::string& endpoint, const std::string& model,
                                  const std::string* prompt, const std::vector<ChatTurn>* messages);

  uint64_t calls() const { return calls_.load(); }
  uint64_t cache_hits() const { return hits_.load(); }
  uint64_t failures() const { return failures_.load(); }

 private:
  struct Target {
    std::string host, port, path;
  };
  absl::StatusOr<std::string> Post(const Target& t, const std::string& body, int64_t deadline_ns);
  absl::StatusOr<std::string> PostOnce(const Target& t, int fd, const std::string& request,
                                       int64_t deadline_ns, bool* reusable);
  int TakeIdle(const std::string& key);
  void GiveBack(const std::string& key, int fd);
  bool CacheGet(const std::string& key, std::vector<uint32_t>* out);
  void CachePut(const std::string& key, const std::vector<uint32_t>& tokens);

  TokenizerOptions options_;
  std::mutex pool_mu_;
  std::map<std::string, std::vector<int>> idle_;  // "host:port" -> idle keep-alive sockets
  std::mutex cache_mu_;
  std::list<std::pair<std::string, std::vector<uint32_t>>> lru_;  // most recent first
  std::unordered_map<std::string, decltype(lru_)::iterator> cache_;
  std::atomic<uint64_t> calls_{0}, hits_{0}, failures_{0};
};

}  // namespace kvidx::query
