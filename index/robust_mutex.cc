#include "index/robust_mutex.h"

#include <errno.h>

#include "shared/status.h"

namespace kvidx::index {

void RobustMutex::Init() {
  pthread_mutexattr_t attr;
  KVIDX_CHECK(pthread_mutexattr_init(&attr) == 0);
  KVIDX_CHECK(pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) == 0);
  KVIDX_CHECK(pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST) == 0);
  KVIDX_CHECK(pthread_mutex_init(&mu_, &attr) == 0);
  pthread_mutexattr_destroy(&attr);
}

RobustMutex::LockResult RobustMutex::Lock() {
  int rc = pthread_mutex_lock(&mu_);
  if (rc == 0) return LockResult::kAcquired;
  if (rc == EOWNERDEAD) return LockResult::kOwnerDied;
  // ENOTRECOVERABLE: a previous repairer died or forgot MarkConsistent(). Nothing protected by
  // this lock can be trusted again; the caller reports it.
  return LockResult::kUnrecoverable;
}

RobustMutex::TryResult RobustMutex::TryLock() {
  int rc = pthread_mutex_trylock(&mu_);
  if (rc == 0) return TryResult::kAcquired;
  if (rc == EBUSY) return TryResult::kBusy;
  if (rc == EOWNERDEAD) return TryResult::kOwnerDied;
  return TryResult::kUnrecoverable;
}

void RobustMutex::MarkConsistent() { pthread_mutex_consistent(&mu_); }

void RobustMutex::Unlock() { pthread_mutex_unlock(&mu_); }

}  // namespace kvidx::index
