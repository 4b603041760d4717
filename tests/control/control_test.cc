// The control area: command slots between a poster (the query process) and a worker, and the
// workers' applied-event rings.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

#include "control/control_area.h"
#include "tests/common/children.h"
#include "tests/index/test_util.h"

namespace kvidx::control {
namespace {

struct Area {
  std::string name = kvidx::testing::UniqueSegmentName("control");
  std::unique_ptr<ControlArea> area;
  Area() {
    ControlArea::Remove(name);
    auto a = ControlArea::Open(name);
    EXPECT_TRUE(a.ok()) << a.status();
    if (a.ok()) area = std::move(*a);
  }
  ~Area() { ControlArea::Remove(name); }
};

absl::StatusOr<uint64_t> PostClearAll(ControlArea& ca, const char* pod) {
  Command c{};
  c.op = static_cast<uint32_t>(CommandOp::kClearAll);
  c.worker = 0;
  EXPECT_TRUE(CopyField(c.args.pod, pod));
  return ca.Post(c);
}

// Issue 9, defect 7: a command whose poster gave up while a worker executed it used to free its
// slot; the next command took the slot and was then marked done with the old command's result.
TEST(ControlTest, ASlotIsNeverReusedWhileItsWorkerRunsTheCommand) {
  Area a;
  ASSERT_NE(a.area, nullptr);
  ControlArea& ca = *a.area;
  auto id_a = PostClearAll(ca, "first");
  ASSERT_TRUE(id_a.ok());

  std::atomic<int> running{0};
  std::atomic<bool> release{false};
  std::thread worker([&] {
    ca.Serve(0, [&](Command& c, std::span<char>) {
      std::string what(FieldView(c.args.pod));  // what it was asked, read when it starts
      running = 1;
      while (!release.load()) std::this_thread::yield();
      EXPECT_TRUE(CopyField(c.result.message, "result of " + what));
    });
  });
  ASSERT_TRUE(
      kvidx::testing::WaitFor([&] { return running.load() == 1; }, std::chrono::seconds(10)));
  // The poster gives up while the worker runs it.
  auto late = ca.Await(*id_a, 1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(late.status()));
  // A new command is posted meanwhile.
  auto id_b = PostClearAll(ca, "second");
  ASSERT_TRUE(id_b.ok());
  release = true;
  worker.join();
  // The worker serves what is pending now: the second command.
  ca.Serve(0, [&](Command& c, std::span<char>) {
    EXPECT_TRUE(CopyField(c.result.message, "result of " + std::string(FieldView(c.args.pod))));
  });
  auto got = ca.Await(*id_b, 5000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(FieldView(got->command.result.message), "result of second");
  EXPECT_EQ(FieldView(got->command.args.pod), "second");
}

TEST(ControlTest, ATypedPayloadReachesThePosterWhole) {
  Area a;
  ASSERT_NE(a.area, nullptr);
  auto id = PostClearAll(*a.area, "p");
  ASSERT_TRUE(id.ok());
  a.area->Serve(0, [](Command& c, std::span<char> payload) {
    SequenceRecord rec{};
    rec.sequence_id = -7;
    rec.stored_blocks = 3;
    std::string rid = "a\nb\\c";  // no byte of a request id is special any more
    rec.request_id_size = static_cast<uint32_t>(rid.size());
    std::memcpy(rec.request_id, rid.data(), rid.size());
    std::memcpy(payload.data(), &rec, sizeof(rec));
    c.result.payload_size = sizeof(rec);
  });
  auto got = a.area->Await(*id, 5000);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->payload.size(), sizeof(SequenceRecord));
  SequenceRecord rec;
  std::memcpy(&rec, got->payload.data(), sizeof(rec));
  EXPECT_EQ(rec.sequence_id, -7);
  EXPECT_EQ(rec.stored_blocks, 3u);
  EXPECT_EQ(std::string(rec.request_id, rec.request_id_size), "a\nb\\c");
}

TEST(ControlTest, ARingReaderSeesWhatIsAppendedAfterItAndCountsWhatItMissed) {
  Area a;
  ASSERT_NE(a.area, nullptr);
  RingEntry e{};
  e.kind = static_cast<uint32_t>(AppliedKind::kStored);
  a.area->Append(1, e);  // before the reader: not seen
  RingReader reader(*a.area, 1);
  for (uint32_t i = 0; i < 5; ++i) {
    e.blocks = i;
    a.area->Append(1, e);
  }
  std::vector<uint32_t> seen;
  EXPECT_TRUE(reader.Poll([&](const RingEntry& got, uint64_t missed) {
    EXPECT_EQ(missed, 0u);
    seen.push_back(got.blocks);
    return true;
  }));
  EXPECT_EQ(seen, (std::vector<uint32_t>{0, 1, 2, 3, 4}));
  // Lapped: the ring holds kRingEntries; the reader reports the rest as missed, once.
  for (uint32_t i = 0; i < kRingEntries + 10; ++i) a.area->Append(1, e);
  uint64_t missed_total = 0, delivered = 0;
  reader.Poll([&](const RingEntry&, uint64_t missed) {
    missed_total += missed;
    ++delivered;
    return true;
  });
  EXPECT_EQ(missed_total, 10u);
  EXPECT_EQ(delivered, uint64_t{kRingEntries});
}

TEST(ControlTest, AnAreaOfAnotherSizeIsRefusedNamingBoth) {
  std::string name = kvidx::testing::UniqueSegmentName("control-size");
  ControlArea::Remove(name);
  int fd = shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  auto a = ControlArea::Open(name);
  ControlArea::Remove(name);
  ASSERT_FALSE(a.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(a.status())) << a.status();
  EXPECT_NE(a.status().message().find("size 4096"), std::string::npos) << a.status();
}

// Issue 10: the query process never creates the area (its owner is the ingest user), and an
// area of another owner or mode is refused before it is mapped.
TEST(ControlTest, AnAreaOfAnotherOwnerOrModeIsRefusedAndTheQueryNeverCreatesOne) {
  std::string name = kvidx::testing::UniqueSegmentName("control-owner");
  ControlArea::Remove(name);
  const auto me = static_cast<uint32_t>(geteuid());
  auto missing = ControlArea::Open(name, 0660, ShmOwnership{me, 0660}, /*create=*/false);
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_NE(access(("/dev/shm/" + name).c_str(), F_OK), 0) << "it was created";
  auto created = ControlArea::Open(name, 0660);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(ControlArea::Open(name, 0660, ShmOwnership{me, 0660}, false).ok());
  auto wrong_mode = ControlArea::Open(name, 0660, ShmOwnership{me, 0600}, false);
  auto wrong_owner = ControlArea::Open(name, 0660, ShmOwnership{me + 1, 0660}, false);
  ControlArea::Remove(name);
  for (const auto* r : {&wrong_mode, &wrong_owner}) {
    ASSERT_FALSE(r->ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(r->status())) << r->status();
    EXPECT_NE(r->status().message().find("with mode 0660"), std::string::npos) << r->status();
  }
}

}  // namespace
}  // namespace kvidx::control
