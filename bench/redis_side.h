// A real redis-server as a bench baseline, with the layout routers use today: per block key a
// hash of the pods holding it (field pod -> references), per engine hash a string naming its
// block key. A store event is one pipeline (HINCRBY + SET per block); a remove resolves the
// engine hash, decrements and drops the field at zero; a lookup is one pipeline of HKEYS over
// the prompt's chain, read up to the first empty answer.
//
// RedisServer starts redis-server on a private Unix socket (no TCP port, no persistence) in a
// child that dies with the bench (PR_SET_PDEATHSIG), and kills and reaps it when destroyed.
#pragma once

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "index/block_key.h"

namespace kvidx::bench {

class RedisServer {
 public:
  // Starts redis-server and connects; ok() says whether it worked, error() why not.
  RedisServer() {
    char tmpl[] = "/tmp/kvidx-bench-redis-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      error_ = "mkdtemp failed";
      return;
    }
    dir_ = tmpl;
    socket_ = dir_ + "/redis.sock";
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      int devnull = open("/dev/null", O_WRONLY);
      if (devnull >= 0) {
        dup2(devnull, 1);
        dup2(devnull, 2);
      }
      std::string dir = dir_;
      std::string sock = socket_;
      execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock.c_str(),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", dir.c_str(),
             "--loglevel", "warning", "--logfile", "", "--daemonize", "no",
             static_cast<char*>(nullptr));
      _exit(127);
    }
    if (pid_ < 0) {
      error_ = "fork failed";
      return;
    }
    // Wait (10 s at most) for the server to accept on its socket, or to die.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        error_ = "redis-server exited at start (is it installed?)";
        return;
      }
      c_ = redisConnectUnix(socket_.c_str());
      if (c_ != nullptr && c_->err == 0) return;
      if (c_ != nullptr) redisFree(c_);
      c_ = nullptr;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    error_ = "redis-server did not accept within 10 s";
  }
  ~RedisServer() {
    if (c_ != nullptr) redisFree(c_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (!socket_.empty()) unlink(socket_.c_str());
    if (!dir_.empty()) rmdir(dir_.c_str());
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  bool ok() const { return c_ != nullptr; }
  const std::string& error() const { return error_; }
  redisContext* ctx() const { return c_; }

  // INFO memory's used_memory, in bytes (0 if unreadable).
  uint64_t UsedMemory() const {
    auto* r = static_cast<redisReply*>(redisCommand(c_, "INFO memory"));
    uint64_t v = 0;
    if (r != nullptr && r->type == REDIS_REPLY_STRING) {
      const char* p = std::strstr(r->str, "used_memory:");
      if (p != nullptr) v = std::strtoull(p + 12, nullptr, 10);
    }
    if (r != nullptr) freeReplyObject(r);
    return v;
  }

 private:
  std::string dir_, socket_, error_;
  pid_t pid_ = -1;
  redisContext* c_ = nullptr;
};

// The router-side client of that layout.
class RedisIndex {
 public:
  RedisIndex(redisContext* c, index::BlockKey root, uint32_t tokens_per_block, uint32_t pods)
      : c_(c), root_(root), tpb_(tokens_per_block), stamp_(pods + 1, 0) {}

  // One pipeline: the n blocks after `parent_key` (the root if none). Returns the last key.
  index::BlockKey Store(uint16_t pod, index::BlockKey parent_key, const uint64_t* hashes,
                        const uint32_t* tokens, uint32_t n) {
    index::BlockKey k = parent_key;
    for (uint32_t i = 0; i < n; ++i) {
      k = index::ChainBlockKey(k, {tokens + size_t{i} * tpb_, tpb_});
      Key b('b', k), e('e', hashes[i]);
      redisAppendCommand(c_, "HINCRBY %b %b 1", b.bytes, sizeof b.bytes, &pod, sizeof pod);
      redisAppendCommand(c_, "SET %b %b", e.bytes, sizeof e.bytes, &k, sizeof k);
    }
    Drain(2 * n);
    return k;
  }
  index::BlockKey root() const { return root_; }

  void Remove(uint16_t pod, uint64_t hash) {
    Key e('e', hash);
    auto* r = static_cast<redisReply*>(redisCommand(c_, "GET %b", e.bytes, sizeof e.bytes));
    if (r != nullptr && r->type == REDIS_REPLY_STRING && r->len == sizeof(index::BlockKey)) {
      index::BlockKey k;
      std::memcpy(&k, r->str, sizeof k);
      Key b('b', k);
      auto* d = static_cast<redisReply*>(
          redisCommand(c_, "HINCRBY %b %b -1", b.bytes, sizeof b.bytes, &pod, sizeof pod));
      if (d != nullptr && d->type == REDIS_REPLY_INTEGER && d->integer <= 0) {
        freeReplyObject(redisCommand(c_, "HDEL %b %b", b.bytes, sizeof b.bytes, &pod, sizeof pod));
      }
      if (d != nullptr) freeReplyObject(d);
    }
    if (r != nullptr) freeReplyObject(r);
  }

  // One remove event of n blocks, as a router pipelines it: the GETs of every engine hash in
  // one round trip, the decrements in a second, the HDELs of fields that reached zero in a third.
  void RemoveMany(uint16_t pod, const uint64_t* hashes, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      Key e('e', hashes[i]);
      redisAppendCommand(c_, "GET %b", e.bytes, sizeof e.bytes);
    }
    std::vector<index::BlockKey> keys;
    for (size_t i = 0; i < n; ++i) {
      redisReply* r = nullptr;
      if (redisGetReply(c_, reinterpret_cast<void**>(&r)) != REDIS_OK || r == nullptr) continue;
      if (r->type == REDIS_REPLY_STRING && r->len == sizeof(index::BlockKey)) {
        index::BlockKey k;
        std::memcpy(&k, r->str, sizeof k);
        keys.push_back(k);
      }
      freeReplyObject(r);
    }
    for (index::BlockKey k : keys) {
      Key b('b', k);
      redisAppendCommand(c_, "HINCRBY %b %b -1", b.bytes, sizeof b.bytes, &pod, sizeof pod);
    }
    uint32_t dels = 0;
    for (index::BlockKey k : keys) {
      redisReply* d = nullptr;
      if (redisGetReply(c_, reinterpret_cast<void**>(&d)) != REDIS_OK || d == nullptr) continue;
      if (d->type == REDIS_REPLY_INTEGER && d->integer <= 0) {
        Key b('b', k);
        redisAppendCommand(c_, "HDEL %b %b", b.bytes, sizeof b.bytes, &pod, sizeof pod);
        ++dels;
      }
      freeReplyObject(d);
    }
    Drain(dels);
  }

  // Same answer as Baseline::Lookup: pods holding keys[0] and their leading-block counts.
  size_t Lookup(const std::vector<index::BlockKey>& keys, std::vector<uint32_t>& counts,
                std::vector<uint16_t>& pods) {
    for (index::BlockKey k : keys) {
      Key b('b', k);
      redisAppendCommand(c_, "HKEYS %b", b.bytes, sizeof b.bytes);
    }
    pods.clear();
    counts.clear();
    size_t alive = 0;
    bool done = false;
    for (size_t i = 0; i < keys.size(); ++i) {
      redisReply* r = nullptr;
      if (redisGetReply(c_, reinterpret_cast<void**>(&r)) != REDIS_OK || r == nullptr) {
        done = true;
        continue;
      }
      if (!done) {
        uint32_t s = ++clock_;
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        if (n == 0) done = true;
        for (size_t j = 0; j < n; ++j) {
          uint16_t pod = 0;
          if (r->element[j]->len == sizeof pod) std::memcpy(&pod, r->element[j]->str, sizeof pod);
          if (pod < stamp_.size()) stamp_[pod] = s;
          if (i == 0) pods.push_back(pod);
        }
        if (i == 0) {
          counts.assign(pods.size(), 1);
          alive = pods.size();
        } else if (!done) {
          for (size_t c = 0; c < pods.size(); ++c) {
            if (counts[c] != i) continue;
            if (stamp_[pods[c]] == s) {
              ++counts[c];
            } else {
              --alive;
            }
          }
          if (alive == 0) done = true;
        }
      }
      freeReplyObject(r);
    }
    return counts.size();
  }

 private:
  struct Key {
    Key(char tag, uint64_t v) {
      bytes[0] = tag;
      std::memcpy(bytes + 1, &v, sizeof v);
    }
    char bytes[9];
  };
  void Drain(uint32_t replies) {
    for (uint32_t i = 0; i < replies; ++i) {
      void* r = nullptr;
      if (redisGetReply(c_, &r) == REDIS_OK && r != nullptr) freeReplyObject(r);
    }
  }
  redisContext* c_;
  index::BlockKey root_;
  uint32_t tpb_;
  std::vector<uint32_t> stamp_;
  uint32_t clock_ = 0;
};

}  // namespace kvidx::bench
