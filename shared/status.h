// Status helpers shared by every component: return/assign macros and invariant checks.
//
// Debian's Abseil (20220623) lacks RETURN_IF_ERROR / ASSIGN_OR_RETURN and absl/log, so kvidx
// defines its own once, here. KVIDX_CHECK guards invariants (never input): a failed check logs
// the condition with its location and aborts, so systemd restarts the process.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvidx::internal {
[[noreturn]] inline void CheckFailed(const char* file, int line, const char* cond) {
  std::fprintf(stderr, "kvidx: check failed at %s:%d: %s\n", file, line, cond);
  std::abort();
}
}  // namespace kvidx::internal

#define KVIDX_CHECK(cond)                                        \
  do {                                                           \
    if (__builtin_expect(!(cond), 0)) {                          \
      ::kvidx::internal::CheckFailed(__FILE__, __LINE__, #cond); \
    }                                                            \
  } while (0)

#ifdef NDEBUG
#define KVIDX_DCHECK(cond) \
  do {                     \
  } while (false && (cond))
#else
#define KVIDX_DCHECK(cond) KVIDX_CHECK(cond)
#endif

#define KVIDX_STATUS_CONCAT_INNER(a, b) a##b
#define KVIDX_STATUS_CONCAT(a, b) KVIDX_STATUS_CONCAT_INNER(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define KVIDX_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::absl::Status kvidx_status_ = (expr);         \
    if (!kvidx_status_.ok()) return kvidx_status_; \
  } while (0)

// `lhs` and `tmp` are declarations, which cannot be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else moves the value
// into `lhs` (which may be a declaration such as `auto x`).
#define KVIDX_ASSIGN_OR_RETURN(lhs, rexpr) \
  KVIDX_ASSIGN_OR_RETURN_IMPL(KVIDX_STATUS_CONCAT(kvidx_statusor_, __LINE__), lhs, rexpr)
#define KVIDX_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)
