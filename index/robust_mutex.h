// A process-shared, robust mutex that can live in shared memory.
//
// Boost 1.74's interprocess_mutex is not robust: a holder that dies leaves it locked forever.
// This wraps a pthread_mutex_t with PTHREAD_PROCESS_SHARED and PTHREAD_MUTEX_ROBUST. When the
// previous holder died while holding it, Lock() still acquires it and returns kOwnerDied: the
// caller must repair whatever the lock protects and then call MarkConsistent() before Unlock().
// Unlocking without MarkConsistent() after kOwnerDied makes the mutex permanently unusable
// (ENOTRECOVERABLE), which Lock() reports as kUnrecoverable.
//
// The object is standard-layout, holds no pointers, and is initialised in place by Init() by the
// process that creates the segment; every other process only locks and unlocks it.
#pragma once

#include <pthread.h>

namespace kvidx::index {

class RobustMutex {
 public:
  enum class LockResult { kAcquired, kOwnerDied, kUnrecoverable };

  // Initialises the mutex in place. Call exactly once, before any other process can see it.
  void Init();

  LockResult Lock();
  // As Lock(), but returns kBusy instead of waiting when another live holder has it.
  enum class TryResult { kAcquired, kOwnerDied, kUnrecoverable, kBusy };
  TryResult TryLock();
  // After kOwnerDied: declares the protected state repaired.
  void MarkConsistent();
  void Unlock();

 private:
  pthread_mutex_t mu_;
};

// Holds a RobustMutex for a scope. `owner_died()` tells the holder a repair is due; the guard
// calls MarkConsistent() itself when the caller has called Repaired().
class RobustLockGuard {
 public:
  explicit RobustLockGuard(RobustMutex& mu) : mu_(mu), result_(mu.Lock()) {}
  ~RobustLockGuard() {
    if (result_ != RobustMutex::LockResult::kUnrecoverable) mu_.Unlock();
  }
  RobustLockGuard(const RobustLockGuard&) = delete;
  RobustLockGuard& operator=(const RobustLockGuard&) = delete;

  bool owner_died() const { return result_ == RobustMutex::LockResult::kOwnerDied; }
  bool unrecoverable() const { return result_ == RobustMutex::LockResult::kUnrecoverable; }
  void Repaired() {
    mu_.MarkConsistent();
    result_ = RobustMutex::LockResult::kAcquired;
  }

 private:
  RobustMutex& mu_;
  RobustMutex::LockResult result_;
};

}  // namespace kvidx::index
