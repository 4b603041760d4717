#include "index/segment.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

#include "index/prefix_index.h"
#include "tests/common/children.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

using ::kvidx::testing::ScopedSegment;
using ::kvidx::testing::SmallGeometry;
using ::kvidx::testing::UniqueSegmentName;

TEST(SegmentTest, CreateIsPreallocatedAndAttachSeesTheSameGeometry) {
  ScopedSegment seg("geo");
  auto layout = ComputeLayout(SmallGeometry());
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(seg.segment()->size(), layout->total_size);
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/" + seg.name()).c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), layout->total_size);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, layout->total_size);  // reserved
  EXPECT_EQ(st.st_mode & 0777, 0640u);  // the ingest user writes, its group reads
  auto again = Segment::Attach(seg.name(), Segment::Access::kReadWrite, SmallGeometry());
  ASSERT_TRUE(again.ok()) << again.status();
  // With the ownership the configuration expects it attaches; another owner or mode is
  // refused before mapping, naming what was found.
  EXPECT_TRUE(Segment::Attach(seg.name(), Segment::Access::kReadOnly, SmallGeometry(),
                              ShmOwnership{static_cast<uint32_t>(geteuid()), 0640})
                  .ok());
  for (ShmOwnership want : {ShmOwnership{static_cast<uint32_t>(geteuid()), 0600},
                            ShmOwnership{static_cast<uint32_t>(geteuid()) + 1, 0640}}) {
    auto refused = Segment::Attach(seg.name(), Segment::Access::kReadOnly, SmallGeometry(), want);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(refused.status().message().find(
                  absl::StrCat("owned by uid ", geteuid(), " with mode 0640")),
              std::string_view::npos)
        << refused.status();
  }
  EXPECT_EQ((*again)->header()->geometry, SmallGeometry());
}

TEST(SegmentTest, AwaitAttachWaitsForTheCreatorAndGivesUpAtItsDeadlineOrStop) {
  const std::string name = UniqueSegmentName("await");
  Segment::Remove(name);
  // Never created: NOT_FOUND once the deadline passes, or at once when told to stop.
  auto none = Segment::AwaitAttach(name, Segment::Access::kReadOnly, std::nullopt,
                                   std::chrono::milliseconds(50));
  EXPECT_TRUE(absl::IsNotFound(none.status())) << none.status();
  std::atomic<bool> stop{true};
  auto stopped = Segment::AwaitAttach(name, Segment::Access::kReadOnly, std::nullopt,
                                      std::chrono::hours(1), &stop);
  EXPECT_TRUE(absl::IsNotFound(stopped.status())) << stopped.status();
  // Created by another thread while the attacher waits (which may be before or after the
  // attacher starts: both end in a mapping).
  std::unique_ptr<Segment> created;
  std::thread creator([&] {
    auto c = Segment::Create(name, SmallGeometry());
    if (c.ok()) created = std::move(*c);
  });
  auto got = Segment::AwaitAttach(name, Segment::Access::kReadOnly, SmallGeometry(),
                                  std::chrono::seconds(30));
  creator.join();
  Segment::Remove(name);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->header()->geometry, SmallGeometry());
  // Another error than NOT_FOUND is returned at once: here, another geometry.
  Geometry other = SmallGeometry();
  other.blocks += 1;
  ScopedSegment seg("await-geo");
  auto wrong =
      Segment::AwaitAttach(seg.name(), Segment::Access::kReadOnly, other, std::chrono::hours(1));
  EXPECT_TRUE(absl::IsFailedPrecondition(wrong.status())) << wrong.status();
}

TEST(SegmentTest, CreateTwiceIsAlreadyExistsAndOpenOrCreateAttaches) {
  ScopedSegment seg("twice");
  EXPECT_TRUE(absl::IsAlreadyExists(Segment::Create(seg.name(), SmallGeometry()).status()));
  auto s = Segment::OpenOrCreate(seg.name(), SmallGeometry());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->size(), seg.segment()->size());
}

TEST(SegmentTest, GeometryMismatchIsAClearError) {
  ScopedSegment seg("mismatch");
  Geometry other = SmallGeometry();
  other.blocks *= 2;
  auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite, other);
  ASSERT_TRUE(absl::IsFailedPrecondition(s.status()));
  EXPECT_NE(s.status().message().find("geometry differs"), std::string::npos);
  EXPECT_TRUE(absl::IsFailedPrecondition(Segment::OpenOrCreate(seg.name(), other).status()));
}

TEST(SegmentTest, ForeignOrOtherVersionLayoutIsRefused) {
  ScopedSegment seg("version");
  seg.segment()->header()->layout_version = kLayoutVersion + 1;
  auto s = Segment::Attach(seg.name(), Segment::Access::kReadOnly);
  ASSERT_TRUE(absl::IsFailedPrecondition(s.status()));
  EXPECT_NE(s.status().message().find("layout version"), std::string::npos);
  seg.segment()->header()->layout_version = kLayoutVersion;
  seg.segment()->header()->magic = 0x1234;
  EXPECT_TRUE(
      absl::IsFailedPrecondition(Segment::Attach(seg.name(), Segment::Access::kReadOnly).status()));
  seg.segment()->header()->magic = kSegmentMagic;
  EXPECT_TRUE(Segment::Attach(seg.name(), Segment::Access::kReadOnly).ok());
}

TEST(SegmentTest, MissingSegmentIsNotFoundAndBadGeometryInvalid) {
  EXPECT_TRUE(absl::IsNotFound(
      Segment::Attach(UniqueSegmentName("absent"), Segment::Access::kReadOnly).status()));
  Geometry g = SmallGeometry();
  g.stripes = 3;
  EXPECT_TRUE(absl::IsInvalidArgument(Segment::Create(UniqueSegmentName("bad"), g).status()));
  g = SmallGeometry();
  g.blocks = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(ComputeLayout(g).status()));
}

// The query process maps the index read-only: a write through that mapping faults.
TEST(SegmentTest, ReadOnlyMappingCannotBeWritten) {
  ScopedSegment seg("rofault");
  kvidx::testing::ChildGuard child = kvidx::testing::ForkChild([&] {
    auto s = Segment::Attach(seg.name(), Segment::Access::kReadOnly);
    if (!s.ok()) return 2;
    // The fault is reported as exit status 42 (a sanitizer's own SEGV handler would otherwise
    // turn it into a report and exit 1).
    struct sigaction sa {};
    sa.sa_handler = [](int) { _exit(42); };
    sigaction(SIGSEGV, &sa, nullptr);
    volatile uint64_t* p = &(*s)->header()->lookups;
    *p = 42;  // must fault
    return 0;
  });
  int status = child.Wait(std::chrono::seconds(30));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 42) << "the write through a read-only mapping did not fault";
  EXPECT_EQ(seg.segment()->header()->lookups, 0u);
}

}  // namespace
}  // namespace kvidx::index

namespace kvidx::index {
namespace {

// Pages() reads what the kernel did for this mapping: the segment's initialised pages are
// resident, huge-page bytes never exceed them, and the policy names the host's settings. Where
// the host rules huge pages out (no huge= on /dev/shm and shmem_enabled not force), none are
// reported.
TEST(SegmentPagesTest, ReportsResidencyHugePagesAndThePolicyThatDecidedThem) {
  kvidx::testing::ScopedSegment seg("pages");
  ASSERT_NE(seg.segment(), nullptr);
  Segment::PageReport r = seg.segment()->Pages();
  EXPECT_GE(r.resident_bytes, sizeof(SegmentHeader));
  EXPECT_LE(r.resident_bytes, seg.segment()->size() + 4096);
  EXPECT_LE(r.huge_page_bytes, r.resident_bytes);
  EXPECT_NE(r.policy.find("/dev/shm huge="), std::string::npos) << r.policy;
  EXPECT_NE(r.policy.find("shmem_enabled="), std::string::npos) << r.policy;
  EXPECT_NE(r.policy.find("madvise(MADV_HUGEPAGE)"), std::string::npos) << r.policy;
  const bool ruled_out = r.policy.find("/dev/shm huge=none") != std::string::npos &&
                         r.policy.find("shmem_enabled=force") == std::string::npos;
  if (ruled_out) {
    EXPECT_EQ(r.huge_page_bytes, 0u) << r.policy;
  }
  // A read-only attachment reports its own mapping.
  auto ro = Segment::Attach(seg.name(), Segment::Access::kReadOnly);
  ASSERT_TRUE(ro.ok()) << ro.status();
  Segment::PageReport rr = (*ro)->Pages();
  EXPECT_LE(rr.huge_page_bytes, rr.resident_bytes);
  EXPECT_LE(rr.resident_bytes, (*ro)->size() + 4096);
}

}  // namespace
}  // namespace kvidx::index
