// Issue 10: the segment is a privilege boundary. As root, the test runs kvidx-ingest and
// kvidx-query as two different users sharing a group (as the systemd units do) and shows that
// the query's user can read the segment but not open it for writing, that a third user cannot
// open it at all, and that a squatted or wrong-mode segment is refused at attach, by both
// processes, with a message naming the owner and mode found.
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

#include <grpcpp/grpcpp.h>

#include "control/control_area.h"
#include "index/segment.h"
#include "kvidx.grpc.pb.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

constexpr uid_t kIngestUid = 61001, kQueryUid = 61002, kOtherUid = 61003;
constexpr gid_t kSharedGid = 61000, kOtherGid = 61003;
const Credentials kIngest{kIngestUid, kSharedGid, {}};
const Credentials kQuery{kQueryUid, kQueryUid, {kSharedGid}};
const Credentials kOther{kOtherUid, kOtherGid, {}};

// Runs `body` in a child as `who`; returns its exit code (-1: it did not exit in time).
template <typename F>
int RunAs(const Credentials& who, F&& body) {
  ChildGuard child = ForkChild([&] {
    if (setgroups(who.groups.size(), who.groups.data()) != 0 || setgid(who.gid) != 0 ||
        setuid(who.uid) != 0) {
      return 126;
    }
    return body();
  });
  int st = child.Wait(std::chrono::milliseconds(20000));
  return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// errno of shm_open(`name`, `flags`) (0 when it opened).
int ShmOpenErrno(const std::string& name, int flags) {
  int fd = shm_open(("/" + name).c_str(), flags, 0);
  if (fd < 0) return errno;
  close(fd);
  return 0;
}

class PrivilegeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) {
      // CI runs as root; a developer's unprivileged run cannot change uids.
      if (std::getenv("CI") != nullptr) FAIL() << "CI must run this test as root";
      GTEST_SKIP() << "needs root to run the services as two users";
    }
    dir_ = "/tmp/kvidx-privilege-" + std::to_string(getpid());
    mkdir(dir_.c_str(), 0777);
    chmod(dir_.c_str(), 0777);  // both users write their logs and sockets here
    segment_ = "kvidx-privilege-" + std::to_string(getpid());
    Cleanup();
  }
  void TearDown() override {
    if (!segment_.empty()) Cleanup();
  }
  void Cleanup() {
    for (const std::string& s : {segment_, segment_ + "-squat", segment_ + "-mode"}) {
      index::Segment::Remove(s);
      control::ControlArea::Remove(control::ControlName(s));
    }
  }
  std::string Config(const std::string& segment, const std::string& tag) {
    std::string path = dir_ + "/" + tag + ".toml";
    std::ofstream(path) << "[segment]\nname = \"" << segment << "\"\nowner = \"" << kIngestUid
                        << "\"\nblocks = 10000\npairs = 40000\npublishers = 16\nnamespaces = 4\n"
                        << "stripes = 16\n[ingest]\nworkers = 1\n"
                        << "[query]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"off\"\n"
                        << "admin_listen = \"unix:" << dir_ << "/" << tag << ".sock\"\n"
                        << "[[model]]\nname = \"m\"\n";
    chmod(path.c_str(), 0644);
    return path;
  }
  index::Geometry SmallGeometry() {
    index::Geometry g;
    g.blocks = 10000;
    g.pairs = 40000;
    g.publishers = 16;
    g.namespaces = 4;
    g.stripes = 16;
    return g;
  }
  std::string dir_, segment_;
};

TEST_F(PrivilegeTest, QueryUserReadsTheSegmentButCannotWriteItAndOthersCannotOpenIt) {
  const std::string config = Config(segment_, "boundary");
  Process ingest({BuildPath("ingest/kvidx-ingest"), "--config", config, "--worker", "0"},
                 dir_ + "/ingest.log", &kIngest);
  Process query(
      {BuildPath("query/kvidx-query"), "--config", config, "--port-file", dir_ + "/query.port"},
      dir_ + "/query.log", &kQuery);
  std::string ports = WaitForFile(dir_ + "/query.port", std::chrono::milliseconds(30000));
  ASSERT_FALSE(ports.empty()) << query.Log() << ingest.Log();
  // The segment and control area are the ingest user's, group-readable only.
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/" + segment_).c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kIngestUid);
  EXPECT_EQ(st.st_gid, kSharedGid);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  ASSERT_EQ(stat(("/dev/shm/" + control::ControlName(segment_)).c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kIngestUid);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // The query, running as its own user, serves from the mapping.
  int port = std::stoi(ports);
  auto stub = v1::KvIndex::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::StatsResponse stats;
  ASSERT_TRUE(stub->Stats(&ctx, {}, &stats).ok());
  // The OS enforces it: the query's user may read but not write; another user may do neither.
  EXPECT_EQ(RunAs(kQuery, [&] { return ShmOpenErrno(segment_, O_RDONLY); }), 0);
  EXPECT_EQ(RunAs(kQuery, [&] { return ShmOpenErrno(segment_, O_RDWR); }), EACCES);
  EXPECT_EQ(RunAs(kOther, [&] { return ShmOpenErrno(segment_, O_RDONLY); }), EACCES);
  EXPECT_EQ(RunAs(kOther,
                  [&] {
                    return index::Segment::Attach(segment_, index::Segment::Access::kReadOnly).ok()
                               ? 1
                               : 0;
                  }),
            0);
  query.Signal(SIGTERM);
  ingest.Signal(SIGTERM);
  EXPECT_GE(query.Wait(std::chrono::milliseconds(10000)), 0);
  EXPECT_GE(ingest.Wait(std::chrono::milliseconds(10000)), 0);
}

TEST_F(PrivilegeTest, SquattedOrWideSegmentsAreRefusedAtAttachNamingWhatWasFound) {
  // Another user creates the name first, world-writable, as an attacker would.
  const std::string squat = segment_ + "-squat";
  ASSERT_EQ(RunAs(kOther,
                  [&] {
                    int fd = shm_open(("/" + squat).c_str(), O_RDWR | O_CREAT | O_EXCL, 0666);
                    if (fd < 0) return 1;
                    int rc = fchmod(fd, 0666) == 0 && ftruncate(fd, 1 << 20) == 0 ? 0 : 2;
                    close(fd);
                    return rc;
                  }),
            0);
  const std::string config = Config(squat, "squat");
  for (auto [argv, who] :
       {std::pair{std::vector<std::string>{BuildPath("ingest/kvidx-ingest"), "--config", config,
                                           "--worker", "0"},
                  &kIngest},
        std::pair{std::vector<std::string>{BuildPath("query/kvidx-query"), "--config", config},
                  &kQuery}}) {
    Process p(argv, dir_ + "/squat-" + std::to_string(who->uid) + ".log", who);
    int st = p.Wait(std::chrono::milliseconds(20000));
    ASSERT_GE(st, 0) << "still running: " << p.Log();
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) != 0) << p.Log();
    EXPECT_NE(p.Log().find("owned by uid 61003 with mode 0666"), std::string::npos) << p.Log();
  }
  // The squatted object is untouched (nobody initialised it or took it over).
  struct stat st {};
  ASSERT_EQ(stat(("/dev/shm/" + squat).c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kOtherUid);
  // The right owner with a wider mode than configured is refused too.
  const std::string wide = segment_ + "-mode";
  ASSERT_EQ(RunAs(kIngest,
                  [&] { return index::Segment::Create(wide, SmallGeometry(), 0644).ok() ? 0 : 1; }),
            0);
  auto attached = index::Segment::Attach(wide, index::Segment::Access::kReadOnly, SmallGeometry(),
                                         ShmOwnership{kIngestUid, 0640});
  ASSERT_FALSE(attached.ok());
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(attached.status().message().find("mode 0644"), std::string::npos) << attached.status();
  // And with the configured ownership it attaches.
  EXPECT_TRUE(index::Segment::Attach(wide, index::Segment::Access::kReadOnly, SmallGeometry(),
                                     ShmOwnership{kIngestUid, 0644})
                  .ok());
}

}  // namespace
}  // namespace kvidx::testing
