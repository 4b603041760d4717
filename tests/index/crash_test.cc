// A writer is SIGKILLed many times at random points while it applies a stream; a reader
// process looks up the whole time. Readers must never stall, and after each recovery the index
// must equal the reference model of exactly the operations the segment acknowledges as applied
// (PublisherSlot::applied_ops).
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "gtest/gtest.h"

#include "shared/clock.h"
#include "tests/index/op_stream.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

using namespace ::kvidx::testing;

struct Shared {
  std::atomic<int> stop;
  std::atomic<uint64_t> lookups;
  std::atomic<uint64_t> degraded;
  std::atomic<uint64_t> over_10ms;
  std::atomic<int64_t> max_ns;
};

TEST(CrashTest, WriterKilledMidUpdateNeverStallsReadersAndRecoversExactly) {
  ScopedSegment seg("crash");
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = kBlockSize});
  BlockKey root = idx.namespace_slot(ns)->root;
  PublisherId a = *idx.RegisterPublisher({.pod = "a", .ns = ns});
  PublisherId b = *idx.RegisterPublisher({.pod = "b", .ns = ns});
  // b's blocks overlap a's: a's stripes hold other publishers' data that must survive.
  auto sb = GenerateStream(21, 3000);
  Model model(root);
  // Twelve more publishers hold every prompt, so a's holders live in overflow chunks too.
  for (int e = 0; e < 12; ++e) {
    PublisherId p = *idx.RegisterPublisher({.pod = "extra-" + std::to_string(e), .ns = ns});
    for (uint32_t pr = 0; pr < kPrompts; ++pr) {
      for (uint32_t blk = 0; blk < kBlocksPerPrompt; ++blk) {
        Op op{Op::kStore, pr, blk, index::kGpu};
        ASSERT_TRUE(ApplyOp(idx, p, root, op).ok());
        model.Apply(p, op);
      }
    }
  }
  for (const Op& op : sb) {
    absl::Status st = ApplyOp(idx, b, root, op);
    ASSERT_TRUE(st.ok() || absl::IsNotFound(st)) << st;
    model.Apply(b, op);
  }
  const size_t n = 400000;
  auto sa = GenerateStream(22, n);

  auto* sh = static_cast<Shared*>(
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(sh, MAP_FAILED);
  new (sh) Shared{};
  pid_t reader = fork();
  ASSERT_GE(reader, 0);
  if (reader == 0) {
    auto s = Segment::Attach(seg.name(), Segment::Access::kReadOnly);
    if (!s.ok()) _exit(2);
    PrefixIndex view(s->get());
    std::vector<PromptKeys> keys;
    for (uint32_t p = 0; p < kPrompts; ++p) keys.push_back(KeysOf(root, p));
    for (uint32_t p = 0; !sh->stop.load(); ++p) {
      int64_t t0 = MonotonicNanos();
      LookupResult r = view.Lookup(keys[p % kPrompts].keys);
      int64_t dt = MonotonicNanos() - t0;
      if (dt > sh->max_ns.load()) sh->max_ns.store(dt);
      if (dt > 10'000'000) sh->over_10ms.fetch_add(1);
      if (r.degraded) sh->degraded.fetch_add(1);
      sh->lookups.fetch_add(1);
    }
    _exit(0);
  }

  std::mt19937 rng(7);
  uint64_t modelled = 0;  // ops of sa already in the model
  int kills = 0;
  for (int cycle = 0; cycle < 60; ++cycle) {
    uint64_t start = idx.publisher_slot(a)->applied_ops;
    if (start >= n) break;
    pid_t w = fork();
    ASSERT_GE(w, 0);
    if (w == 0) {
      auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite);
      if (!s.ok()) _exit(2);
      PrefixIndex wi(s->get());
      for (size_t i = start; i < n; ++i) {
        absl::Status st = ApplyOp(wi, a, root, sa[i]);
        if (!st.ok() && !absl::IsNotFound(st)) _exit(3);
      }
      _exit(0);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 4000));
    kill(w, SIGKILL);
    int status = 0;
    waitpid(w, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "writer ended on its own: " << status;
    ++kills;
    // Leave a stripe the writer may have died holding abandoned for a while: readers must
    // keep answering meanwhile.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_TRUE(idx.RecoverPublisher(a).ok());
    idx.RepairAbandonedStripes();
    uint64_t applied = idx.publisher_slot(a)->applied_ops;
    ASSERT_GE(applied, start);
    for (; modelled < applied; ++modelled) model.Apply(a, sa[modelled]);
    std::string diff = model.Diff(idx);
    ASSERT_EQ(diff, "") << "after kill " << kills << " at op " << applied;
    EXPECT_EQ(idx.publisher_slot(a)->journal.op, 0u);
    // Pair counts are exact again after recovery.
    uint64_t pairs = 0;
    for (const auto& e : idx.Dump()) pairs += e.holder.publisher == a;
    EXPECT_EQ(idx.publisher_slot(a)->pairs, pairs);
  }
  sh->stop = true;
  waitpid(reader, nullptr, 0);
  IndexStats st = idx.Stats();
  std::printf(
      "kills %d, ops applied %lu, stripe repairs %lu, reader lookups %lu, degraded %lu, "
      "longest lookup %.2f ms\n",
      kills, static_cast<unsigned long>(modelled), static_cast<unsigned long>(st.stripe_repairs),
      static_cast<unsigned long>(sh->lookups.load()),
      static_cast<unsigned long>(sh->degraded.load()), sh->max_ns.load() / 1e6);
  EXPECT_GE(kills, 30);
  EXPECT_GT(st.stripe_repairs, 0u) << "no kill landed inside a stripe update";
  EXPECT_GT(sh->lookups.load(), 1000u);
  EXPECT_EQ(sh->over_10ms.load(), 0u) << "longest " << sh->max_ns.load() / 1e6 << " ms";
  munmap(sh, sizeof(Shared));
}

}  // namespace
}  // namespace kvidx::index
