// Two writer processes apply random store/remove streams for different publishers that share
// blocks while a reader process looks up the whole time; afterwards the index equals the
// reference model built from the same streams.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "gtest/gtest.h"

#include "shared/clock.h"
#include "tests/common/children.h"
#include "tests/index/op_stream.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

using namespace ::kvidx::testing;

struct ReaderReport {
  uint64_t lookups;
  uint64_t bad;
  int64_t max_wait_ns;
};

TEST(MultiProcessTest, TwoWriterProcessesAndAReaderEndEqualToModel) {
  ScopedSegment seg("mp");
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = kBlockSize});
  BlockKey root = idx.namespace_slot(ns)->root;
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  PublisherId b = *idx.RegisterPublisher({.pod = "b", .ns = ns});
  const size_t n = 30000;
  auto sa = GenerateStream(11, n);
  auto sb = GenerateStream(12, n);

  int report_pipe[2];
  ASSERT_EQ(pipe(report_pipe), 0);
  // The reader stops on its own once both streams are applied (it reads their counters from
  // the segment); its guard kills it on any early exit of the test.
  ChildGuard reader = ForkChild([&] {
    auto s = Segment::Attach(seg.name(), Segment::Access::kReadOnly);
    if (!s.ok()) return 2;
    PrefixIndex view(s->get());
    ReaderReport rep{0, 0, 0};
    std::vector<PromptKeys> keys;
    for (uint32_t p = 0; p < kPrompts; ++p) keys.push_back(KeysOf(root, p));
    for (uint32_t p = 0;; ++p) {
      int64_t t0 = MonotonicNanos();
      LookupResult r = view.Lookup(keys[p % kPrompts].keys);
      rep.max_wait_ns = std::max(rep.max_wait_ns, MonotonicNanos() - t0);
      for (const auto& m : r.matches) {
        if ((m.publisher != a && m.publisher != b) || m.blocks > kBlocksPerPrompt) ++rep.bad;
      }
      ++rep.lookups;
      if (view.publisher_slot(a)->index.applied_ops == n &&
          view.publisher_slot(b)->index.applied_ops == n && rep.lookups > 1000) {
        break;
      }
    }
    (void)!write(report_pipe[1], &rep, sizeof(rep));
    return 0;
  });
  auto spawn_writer = [&](PublisherId p, const std::vector<Op>& ops) {
    return ForkChild([&, p] {
      auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite);
      if (!s.ok()) return 2;
      PrefixIndex w(s->get());
      for (const Op& op : ops) {
        absl::Status st = ApplyOp(w, p, root, op);
        if (!st.ok() && !absl::IsNotFound(st)) return 3;
      }
      return 0;
    });
  };
  ChildGuard wa = spawn_writer(a, sa);
  ChildGuard wb = spawn_writer(b, sb);
  const auto deadline = std::chrono::seconds(120);
  int status = wa.Wait(deadline);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  status = wb.Wait(deadline);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  status = reader.Wait(deadline);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ReaderReport rep{};
  ASSERT_EQ(read(report_pipe[0], &rep, sizeof(rep)), static_cast<ssize_t>(sizeof(rep)));
  EXPECT_GT(rep.lookups, 1000u);
  EXPECT_EQ(rep.bad, 0u);
  std::printf("reader: %lu lookups, longest %.1f us\n", rep.lookups, rep.max_wait_ns / 1e3);

  Model model(root);
  for (const Op& op : sa) model.Apply(a, op);
  for (const Op& op : sb) model.Apply(b, op);
  EXPECT_GT(model.size(), 0u);
  EXPECT_EQ(model.Diff(idx), "");
}

}  // namespace
}  // namespace kvidx::index
