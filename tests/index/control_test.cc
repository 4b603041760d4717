// The control area's command slots between a poster (the query process) and a worker.
#include "index/control.h"

#include <atomic>
#include <cstring>
#include <thread>

#include "gtest/gtest.h"

#include "tests/common/children.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

// Issue 9, defect 7: a command whose poster gave up while a worker executed it used to free its
// slot; the next command took the slot and was then marked done with the old command's result.
TEST(ControlTest, ASlotIsNeverReusedWhileItsWorkerRunsTheCommand) {
  std::string name = kvidx::testing::UniqueSegmentName("control");
  ControlArea::Remove(name);
  struct Cleanup {
    std::string n;
    ~Cleanup() { ControlArea::Remove(n); }
  } cleanup{name};
  auto area = ControlArea::Open(name);
  ASSERT_TRUE(area.ok()) << area.status();
  ControlArea& ca = **area;

  auto post = [&](const char* pod) {
    Command c{};
    c.op = static_cast<uint32_t>(CommandOp::kClearAll);
    c.worker = 0;
    std::snprintf(c.pod, sizeof(c.pod), "%s", pod);
    return ca.Post(c);
  };
  auto id_a = post("first");
  ASSERT_TRUE(id_a.ok());

  std::atomic<int> running{0};
  std::atomic<bool> release{false};
  std::thread worker([&] {
    ca.Serve(0, [&](Command& c, char*) {
      std::string what = c.pod;  // what it was asked, read when it starts
      running = 1;
      while (!release.load()) std::this_thread::yield();
      std::snprintf(c.message, sizeof(c.message), "result of %s", what.c_str());
    });
  });
  ASSERT_TRUE(
      kvidx::testing::WaitFor([&] { return running.load() == 1; }, std::chrono::seconds(10)));
  // The poster gives up while the worker runs it.
  auto late = ca.Await(*id_a, 1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(late.status()));
  // A new command is posted meanwhile.
  auto id_b = post("second");
  ASSERT_TRUE(id_b.ok());
  release = true;
  worker.join();
  // The worker serves what is pending now: the second command.
  ca.Serve(0, [&](Command& c, char*) {
    std::snprintf(c.message, sizeof(c.message), "result of %s", c.pod);
  });
  auto got = ca.Await(*id_b, 5000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_STREQ(got->message, "result of second");
  EXPECT_STREQ(got->pod, "second");
}

}  // namespace
}  // namespace kvidx::index
