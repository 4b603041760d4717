// A test seam inside every stripe write: lets crash tests stop a writer mid-update.
#pragma once

namespace kvidx::index {

// When set, called inside every stripe write (block or engine stripe) with the stripe's lock
// held and its version odd: once right after locking (`finishing` false) and once after the
// writes, before the version turns even (`finishing` true). Crash tests use it to stop a writer
// inside an update by construction. Null in production; set it before any writer runs.
using StripeWriteHook = void (*)(bool finishing);
extern StripeWriteHook g_stripe_write_hook;

}  // namespace kvidx::index
