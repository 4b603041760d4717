#include "shared/shm_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace kvidx {
namespace {
std::string Octal(uint32_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", mode & 07777u);
  return buf;
}
}  // namespace

absl::Status CheckShmOwnership(int fd, std::string_view what_view, const ShmOwnership& want) {
  const std::string what(what_view);  // Debian's absl::string_view is not std::string_view
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat(
        "fstat on ", what, ": ", std::error_code(errno, std::generic_category()).message()));
  }
  const uint32_t mode = static_cast<uint32_t>(st.st_mode) & 07777u;
  if (st.st_uid == want.uid && mode == want.mode) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      what, " is owned by uid ", st.st_uid, " with mode ", Octal(mode),
      "; the configuration expects owner uid ", want.uid, " and mode ", Octal(want.mode),
      " (segment_owner, mode, control_mode). Refusing it: a segment another user created or "
      "can write could feed the index forged data. Remove it from /dev/shm if it is not "
      "kvidx's own."));
}

}  // namespace kvidx
