// The ownership a kvidx shared-memory object (the index segment, the control area) must have
// before anyone maps it: those objects are the privilege boundary between the ingest user (the
// only writer of the index) and the query user (a reader), so a squatted object, one created by
// another user or with a wider mode, is never used as is.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace kvidx {

struct ShmOwnership {
  uint32_t uid = 0;      // the owner it must have
  uint32_t mode = 0640;  // exactly these permission bits
};

// OK if the object open on `fd` is owned by `want.uid` with exactly `want.mode`; otherwise
// FAILED_PRECONDITION naming `what`, the owner and mode found and the ones expected. An object
// of the right owner whose mode is narrower is waited for (up to 2 s): its creator has not yet
// set the mode the umask narrowed.
absl::Status CheckShmOwnership(int fd, std::string_view what, const ShmOwnership& want);

}  // namespace kvidx
