#include "config/aibrix_env.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "control/layout.h"

namespace kvidx::config {
namespace {

const char* Env(const char* name) {
  // Configuration is read at start-up and on SIGHUP, from the one main thread.
  return std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
}

absl::Status Bad(const char* name, const char* value, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("environment ", name, "='", value, "': ", why));
}

// Go's strconv.ParseBool spellings.
absl::StatusOr<bool> ParseGoBool(std::string_view v) {
  for (std::string_view t : {"1", "t", "T", "TRUE", "true", "True"})
    if (v == t) return true;
  for (std::string_view f : {"0", "f", "F", "FALSE", "false", "False"})
    if (v == f) return false;
  return absl::InvalidArgumentError("not a boolean");
}

// A duration variable into a millisecond field of at most `max` (0 allowed when `zero_ok`).
absl::Status DurationInto(const char* name, uint32_t* field, bool zero_ok) {
  const char* v = Env(name);
  if (v == nullptr) return absl::OkStatus();
  auto ms = ParseGoDuration(v);
  if (!ms.ok()) return Bad(name, v, std::string(ms.status().message()));
  if (*ms == 0 && !zero_ok) return Bad(name, v, "must be at least 1ms");
  if (*ms > std::numeric_limits<uint32_t>::max()) return Bad(name, v, "too long");
  *field = static_cast<uint32_t>(*ms);
  return absl::OkStatus();
}

// A count variable into `field`, within [lo, hi].
template <typename T>
absl::Status CountInto(const char* name, T* field, uint64_t lo, uint64_t hi) {
  const char* v = Env(name);
  if (v == nullptr) return absl::OkStatus();
  uint64_t n = 0;
  if (!absl::SimpleAtoi(v, &n)) return Bad(name, v, "not a whole number");
  if (n < lo || n > hi) return Bad(name, v, absl::StrCat("must be ", lo, "..", hi));
  *field = static_cast<T>(n);
  return absl::OkStatus();
}

// A variable kvidx has no setting for: accepted with a warning (its value was checked).
absl::Status Meaningless(Config* c, const char* name, const char* why) {
  const char* v = Env(name);
  if (v == nullptr) return absl::OkStatus();
  c->warnings.push_back(absl::StrCat(name, "='", v, "' is accepted and ignored: ", why));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> ParseGoDuration(std::string_view text) {
  if (text == "0") return 0;
  if (text.empty()) return absl::InvalidArgumentError("an empty duration");
  struct Unit {
    std::string_view name;
    double ms;
  };
  static constexpr Unit kUnits[] = {{"ns", 1e-6}, {"us", 1e-3}, {"\xC2\xB5s", 1e-3}, {"ms", 1.0},
                                    {"s", 1e3},   {"m", 60e3},  {"h", 3600e3}};
  double total = 0;
  std::string_view rest = text;
  while (!rest.empty()) {
    size_t n = 0;
    while (n < rest.size() &&
           (absl::ascii_isdigit(static_cast<unsigned char>(rest[n])) || rest[n] == '.'))
      ++n;
    double value = 0;
    if (n == 0 || !absl::SimpleAtod(std::string(rest.substr(0, n)), &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", std::string(text), "' is not a Go duration (e.g. 100ms, 5s, 1m30s)"));
    }
    rest.remove_prefix(n);
    const Unit* unit = nullptr;
    for (const Unit& u : kUnits) {
      // The longest unit that starts here ("ms" before "m").
      if (rest.substr(0, u.name.size()) == u.name &&
          (unit == nullptr || u.name.size() > unit->name.size()))
        unit = &u;
    }
    if (unit == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", std::string(text), "' has a number without a unit (ns, us, ms, s, m, h)"));
    }
    rest.remove_prefix(unit->name.size());
    total += value * unit->ms;
  }
  if (!std::isfinite(total) || total > 1e15) return absl::InvalidArgumentError("too long");
  return static_cast<uint64_t>(total);
}

absl::Status ApplyAibrixEnvironment(Config* c) {
  // Honoured: the same meaning as a kvidx setting.
  for (auto [name, field, zero_ok] :
       {std::tuple{"AIBRIX_ZMQ_POLL_TIMEOUT", &c->poll_timeout_ms, false},
        std::tuple{"AIBRIX_ZMQ_REPLAY_TIMEOUT", &c->replay_timeout_ms, false},
        std::tuple{"AIBRIX_ZMQ_LINGER", &c->zmq_linger_ms, true}}) {
    if (absl::Status st = DurationInto(name, field, zero_ok); !st.ok()) return st;
  }
  if (absl::Status st = CountInto("AIBRIX_KV_EVENT_WORKER_COUNT", &c->workers, 1,
                                  static_cast<uint64_t>(control::kMaxWorkers));
      !st.ok())
    return st;
  if (absl::Status st =
          CountInto("AIBRIX_KV_EVENT_BUFFER_SIZE", &c->max_buffered_batches, 1, uint64_t{1} << 32);
      !st.ok())
    return st;
  if (absl::Status st = CountInto("AIBRIX_KV_EVENT_QUEUE_SIZE", &c->rcvhwm, 1,
                                  std::numeric_limits<int32_t>::max());
      !st.ok())
    return st;
  if (const char* v = Env("AIBRIX_KV_EVENT_SYNC_ENABLED")) {
    auto on = ParseGoBool(v);
    if (!on.ok()) return Bad("AIBRIX_KV_EVENT_SYNC_ENABLED", v, "not a boolean");
    if (!*on) {
      c->warnings.push_back(
          "AIBRIX_KV_EVENT_SYNC_ENABLED=false is accepted and ignored: syncing KV events is what "
          "kvidx-ingest does; stop its unit to stop it");
    }
  }
  // Accepted with a reason: kvidx has no such setting.
  if (const char* v = Env("AIBRIX_KV_EVENT_BATCH_SIZE"); v != nullptr) {
    uint64_t n = 0;
    if (!absl::SimpleAtoi(v, &n) || n == 0)
      return Bad("AIBRIX_KV_EVENT_BATCH_SIZE", v, "not a count");
  }
  // The remote tokenizer: the endpoint of every model that names none; kvidx never tokenizes
  // locally, so "false" and "local" are accepted with a warning.
  if (const char* v = Env("AIBRIX_USE_REMOTE_TOKENIZER")) {
    auto on = ParseGoBool(v);
    if (!on.ok()) return Bad("AIBRIX_USE_REMOTE_TOKENIZER", v, "not a boolean");
    if (!*on) {
      c->warnings.push_back(absl::StrCat("AIBRIX_USE_REMOTE_TOKENIZER='", v,
                                         "' is accepted and ignored: kvidx never tokenizes "
                                         "locally (prompt text goes to tokenizer_endpoint)"));
    }
  }
  if (const char* v = Env("AIBRIX_PREFIX_CACHE_TOKENIZER_TYPE"); v != nullptr) {
    if (std::string(v) != "remote") {
      c->warnings.push_back(absl::StrCat("AIBRIX_PREFIX_CACHE_TOKENIZER_TYPE='", v,
                                         "' is accepted and ignored: kvidx's tokenizer is always "
                                         "the remote one"));
    }
  }
  if (const char* v = Env("AIBRIX_REMOTE_TOKENIZER_ENDPOINT"); v != nullptr && *v != '\0') {
    std::string ep = v;
    if (ep.find("://") == std::string::npos) ep = "http://" + ep;
    if (ep.rfind("http://", 0) != 0)
      return Bad("AIBRIX_REMOTE_TOKENIZER_ENDPOINT", v, "only http:// endpoints are supported");
    for (ModelConfig& m : c->models)
      if (m.tokenizer_endpoint.empty()) m.tokenizer_endpoint = ep;
  }
  for (const char* name : {"AIBRIX_ZMQ_RECV_TIMEOUT", "AIBRIX_ZMQ_SEND_TIMEOUT"}) {
    if (const char* v = Env(name); v != nullptr && !ParseGoDuration(v).ok())
      return Bad(name, v, std::string(ParseGoDuration(v).status().message()));
  }
  for (auto [name, why] : {
           std::pair{"AIBRIX_ZMQ_RECV_TIMEOUT",
                     "kvidx never blocks on a receive: it polls (AIBRIX_ZMQ_POLL_TIMEOUT) and "
                     "times replays out (AIBRIX_ZMQ_REPLAY_TIMEOUT)"},
           std::pair{"AIBRIX_ZMQ_SEND_TIMEOUT",
                     "kvidx never blocks on a send: a replay request that cannot leave at once "
                     "is dropped and asked again at the replay timeout"},
           std::pair{"AIBRIX_KV_EVENT_BATCH_SIZE",
                     "kvidx applies each engine batch whole as it arrives"},
       }) {
    if (absl::Status st = Meaningless(c, name, why); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace kvidx::config
