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

#include "gtest/gtest.h"

#include "shared/clock.h"
#include "tests/common/children.h"
#include "tests/index/op_stream.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

using namespace ::kvidx::testing;

struct Shared {
  std::atomic<int> stop;
  std::atomic<uint64_t> lookups;
  std::atomic<uint64_t> degraded;
  std::atomic<int64_t> max_ns;
  std::atomic<uint64_t> progress;  // ops of the stream the writer has begun (index + 1)
  std::atomic<int> parked;         // the writer is parked inside a stripe write
};

// In the writer child: park (forever, lock held, version odd) at the g_park_at-th call.
uint64_t g_park_at = 0;
Shared* g_shared = nullptr;
void ParkInsideWrite(bool /*finishing*/) {
  if (--g_park_at != 0) return;
  g_shared->parked.store(1);
  for (;;) pause();
}

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
  const size_t n = 1000000;
  auto sa = GenerateStream(22, n);

  auto* sh = static_cast<Shared*>(
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(sh, MAP_FAILED);
  new (sh) Shared{};
  struct Unmap {
    Shared* p;
    ~Unmap() { munmap(p, sizeof(Shared)); }
  } unmap{sh};
  // The reader looks up until told to stop; its guard kills it on every path out of the test.
  ChildGuard reader = ForkChild([&] {
    auto s = Segment::Attach(seg.name(), Segment::Access::kReadOnly);
    if (!s.ok()) return 2;
    PrefixIndex view(s->get());
    std::vector<PromptKeys> keys;
    for (uint32_t p = 0; p < kPrompts; ++p) keys.push_back(KeysOf(root, p));
    for (uint32_t p = 0; !sh->stop.load(); ++p) {
      int64_t t0 = MonotonicNanos();
      LookupResult r = view.Lookup(keys[p % kPrompts].keys);
      int64_t dt = MonotonicNanos() - t0;
      if (dt > sh->max_ns.load()) sh->max_ns.store(dt);
      if (r.degraded) sh->degraded.fetch_add(1);
      sh->lookups.fetch_add(1);
    }
    return 0;
  });
  ASSERT_TRUE(reader.alive());

  std::mt19937 rng(7);
  uint64_t modelled = 0;  // ops of sa already in the model
  int kills = 0;
  int mid_update = 0;  // kills that left a stripe abandoned (its lock owner dead)
  int reader_kept_going = 0;
  int parked_kills = 0;  // kills of a writer parked inside a stripe update by the hook
  for (int cycle = 0; cycle < 60; ++cycle) {
    uint64_t start = idx.publisher_slot(a)->index.applied_ops;
    ASSERT_LT(start + 30000, n) << "the stream must outlast every cycle (cycle " << cycle << ")";
    sh->progress.store(start);
    sh->parked.store(0);
    // Even cycles park the writer inside its k-th stripe write (at its start or its end, the
    // version odd) and kill it there: mid-update by construction. Odd cycles kill it while it
    // runs, wherever the signal finds it, once it has begun op `target`; it stops by itself
    // 20000 ops later so that the stream outlasts every cycle whatever the scheduler does.
    const bool park = cycle % 2 == 0;
    const uint64_t park_at = 1 + rng() % 6000;
    const uint64_t target = start + 1 + rng() % 3000;
    ChildGuard w = ForkChild([&] {
      auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite);
      if (!s.ok()) return 2;
      PrefixIndex wi(s->get());
      if (park) {
        g_park_at = park_at;
        g_shared = sh;
        g_stripe_write_hook = ParkInsideWrite;
      }
      size_t end = std::min<size_t>(n, target + 20000);
      for (size_t i = start; i < end; ++i) {
        sh->progress.store(i + 1, std::memory_order_relaxed);
        absl::Status st = ApplyOp(wi, a, root, sa[i]);
        if (!st.ok() && !absl::IsNotFound(st)) return 3;
      }
      for (;;) pause();
    });
    ASSERT_TRUE(w.alive());
    if (park) {
      ASSERT_TRUE(WaitFor([&] { return sh->parked.load() != 0; }, std::chrono::seconds(60)))
          << "writer never reached stripe write " << park_at;
    } else {
      ASSERT_TRUE(WaitFor([&] { return sh->progress.load() >= target; }, std::chrono::seconds(60),
                          std::chrono::microseconds(0)))
          << "writer did not reach op " << target << " (at " << sh->progress.load() << ")";
    }
    int status = w.Kill();
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "writer ended on its own: " << status;
    ++kills;
    // A stripe the writer died holding stays abandoned until recovery below: readers must
    // keep answering meanwhile (they never wait for a lock; a reader stuck behind the dead
    // writer would stop the lookup counter).
    bool abandoned = idx.StripesMidUpdate() > 0;
    if (park) {
      EXPECT_TRUE(abandoned) << "a writer parked inside a stripe write left no stripe odd";
      parked_kills += abandoned;
    }
    if (abandoned) {
      uint64_t before = sh->lookups.load();
      ASSERT_TRUE(WaitFor([&] { return sh->lookups.load() >= before + 2 * kPrompts; },
                          std::chrono::seconds(30)))
          << "reader stalled behind a dead writer's stripe";
      ++reader_kept_going;
    }
    uint64_t repairs_before = idx.Stats().stripe_repairs;
    ASSERT_TRUE(idx.RecoverPublisher(a).ok());
    idx.RepairAbandonedStripes();
    mid_update += idx.Stats().stripe_repairs != repairs_before;
    uint64_t applied = idx.publisher_slot(a)->index.applied_ops;
    ASSERT_GE(applied, start);
    for (; modelled < applied; ++modelled) model.Apply(a, sa[modelled]);
    std::string diff = model.Diff(idx);
    ASSERT_EQ(diff, "") << "after kill " << kills << " at op " << applied;
    EXPECT_EQ(idx.publisher_slot(a)->index.journal.op, 0u);
    // Pair counts are exact again after recovery.
    uint64_t pairs = 0;
    for (const auto& e : idx.Dump()) pairs += e.holder.publisher == a;
    EXPECT_EQ(idx.publisher_slot(a)->index.pairs, pairs);
  }
  sh->stop = true;
  int rstatus = reader.Wait(std::chrono::seconds(30));
  EXPECT_TRUE(WIFEXITED(rstatus) && WEXITSTATUS(rstatus) == 0) << rstatus;
  IndexStats st = idx.Stats();
  std::printf(
      "kills %d (%d parked in a stripe write, %d mid-update in all, reader kept answering across "
      "%d abandoned stripes), ops applied "
      "%lu, stripe repairs %lu, reader lookups %lu, degraded %lu, longest lookup %.2f ms\n",
      kills, parked_kills, mid_update, reader_kept_going, static_cast<unsigned long>(modelled),
      static_cast<unsigned long>(st.stripe_repairs), static_cast<unsigned long>(sh->lookups.load()),
      static_cast<unsigned long>(sh->degraded.load()), sh->max_ns.load() / 1e6);
  EXPECT_EQ(kills, 60);
  EXPECT_EQ(parked_kills, kills / 2);
  EXPECT_GE(mid_update, parked_kills);
  EXPECT_GT(sh->lookups.load(), 1000u);
}

// Issue 9, defect 6: a remove that keeps references (refs 2 -> 1) is redone after its writer
// died; the redo re-states the engine-hash mapping in the journal's namespace, which must be
// the remove's own, not the one of the publisher's last store elsewhere.
TEST(CrashTest, RedoOfAnInterruptedRemoveUsesItsOwnNamespace) {
  ScopedSegment seg("crash-ns");
  PrefixIndex& idx = seg.index();
  NamespaceId a = *idx.RegisterNamespace({.model = "m", .block_size = 2});
  NamespaceId b = *idx.RegisterNamespace({.model = "m", .lora_name = "adapter", .block_size = 2});
  PublisherId p = *idx.RegisterPublisher({.pod = "p", .ns = a});
  auto store = [&](NamespaceId ns, uint64_t hash, std::vector<uint32_t> tokens) {
    StoreRequest req;
    req.ns = ns;
    std::vector<uint64_t> hashes = {hash};
    req.engine_hashes = hashes;
    req.tokens = tokens;
    req.block_size = 2;
    return idx.Store(p, req).ok();
  };
  const uint64_t h = 77, g = 88;
  ASSERT_TRUE(store(b, h, {1, 2}));
  ASSERT_TRUE(store(b, h, {1, 2}));  // two references in namespace b
  ASSERT_TRUE(store(a, g, {3, 4}));  // the journal's last namespace is now a
  ASSERT_FALSE(idx.ResolveEngineHash(a, p, h).has_value());
  // The remove's writer parks after its writes, the stripe still odd, and is killed there.
  auto* parked =
      static_cast<std::atomic<int>*>(mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                                          MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(parked, MAP_FAILED);
  new (parked) std::atomic<int>(0);
  static std::atomic<int>* g_parked;
  g_parked = parked;
  ChildGuard w = ForkChild([&] {
    auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite);
    if (!s.ok()) return 2;
    PrefixIndex wi(s->get());
    g_stripe_write_hook = [](bool finishing) {
      if (!finishing) return;
      g_parked->store(1);
      for (;;) pause();
    };
    (void)wi.Remove(p, kGpu, h, b);
    return 3;  // never reached
  });
  ASSERT_TRUE(WaitFor([&] { return parked->load() == 1; }, std::chrono::seconds(30)));
  int status = w.Kill();
  ASSERT_TRUE(WIFSIGNALED(status));
  munmap(parked, sizeof(std::atomic<int>));
  ASSERT_TRUE(idx.RecoverPublisher(p).ok());
  EXPECT_FALSE(idx.ResolveEngineHash(a, p, h).has_value())
      << "the redo wrote the mapping into another namespace";
  EXPECT_TRUE(idx.ResolveEngineHash(b, p, h).has_value());
  auto keys = *idx.KeysForTokens(b, std::vector<uint32_t>{1, 2});
  auto holders = idx.Holders(keys[0]);
  ASSERT_EQ(holders.size(), 1u);
  EXPECT_EQ(holders[0].refs, 1u);
}

}  // namespace
}  // namespace kvidx::index
