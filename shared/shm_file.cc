#include "shared/shm_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <system_error>
#include <thread>

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
  uint32_t mode = static_cast<uint32_t>(st.st_mode) & 07777u;
  // The right owner with a narrower mode is its creator between shm_open (the umask narrows
  // the mode) and fchmod: wait for it, up to 2 s. Nobody else can make an object of that owner.
  for (int i = 0;
       i < 2000 && st.st_uid == want.uid && mode != want.mode && (mode & ~want.mode) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (fstat(fd, &st) != 0) break;
    mode = static_cast<uint32_t>(st.st_mode) & 07777u;
  }
  if (st.st_uid == want.uid && mode == want.mode) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      what, " is owned by uid ", st.st_uid, " with mode ", Octal(mode),
      "; the configuration expects owner uid ", want.uid, " and mode ", Octal(want.mode),
      " (segment_owner, mode, control_mode). Refusing it: a segment another user created or "
      "can write could feed the index forged data. Remove it from /dev/shm if it is not "
      "kvidx's own."));
}

}  // namespace kvidx
