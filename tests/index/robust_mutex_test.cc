#include "index/robust_mutex.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gtest/gtest.h"

#include "index/segment.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

// The holder of a stripe-style lock is SIGKILLed while holding it; another process then gets
// kOwnerDied, repairs, and the lock keeps working for everyone.
TEST(RobustMutexTest, DeathOfHolderInAnotherProcessIsReportedAndRecoverable) {
  kvidx::testing::ScopedSegment seg("mutex");
  RobustMutex& mu = seg.segment()->header()->admin_mu;
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite);
    if (!s.ok()) _exit(2);
    (*s)->header()->admin_mu.Lock();
    char c = 1;
    (void)!write(ready[1], &c, 1);
    pause();
    _exit(0);
  }
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  EXPECT_EQ(mu.TryLock(), RobustMutex::TryResult::kBusy);
  kill(child, SIGKILL);
  int status;
  waitpid(child, &status, 0);
  EXPECT_EQ(mu.Lock(), RobustMutex::LockResult::kOwnerDied);
  mu.MarkConsistent();
  mu.Unlock();
  EXPECT_EQ(mu.Lock(), RobustMutex::LockResult::kAcquired);
  mu.Unlock();
  close(ready[0]);
  close(ready[1]);
}

TEST(RobustMutexTest, GuardReportsOwnerDeathAndUnrecoverableState) {
  kvidx::testing::ScopedSegment seg("mutex2");
  RobustMutex& mu = seg.segment()->header()->admin_mu;
  pid_t child = fork();
  if (child == 0) {
    auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite);
    (*s)->header()->admin_mu.Lock();
    _exit(0);  // exits holding it: the same as dying
  }
  waitpid(child, nullptr, 0);
  {
    RobustLockGuard g(mu);
    EXPECT_TRUE(g.owner_died());
    // Not repaired: unlocking leaves the mutex not recoverable.
  }
  RobustLockGuard g2(mu);
  EXPECT_TRUE(g2.unrecoverable());
}

}  // namespace
}  // namespace kvidx::index
