// Two writer processes apply the op streams of op_stream.h for four publishers — content hashes
// shared across pods and per-pod (unseeded) hashes — into a segment whose tables are small
// enough that eviction, a publisher quota and the engine-hash table all fill up.
// (Unchained page hashes, SGLang-style, are not in the mix: when one pod holds the same page at
// two positions, a removal or a child's parent naming that hash is ambiguous by construction;
// across pods the conflict is handled and tested in prefix_index_test.) Both writers are SIGKILLed
// at chosen points again and again. After every recovery the index must hold nothing the model of
// the acknowledged operations does not: every (block, publisher, tier) it holds is in the model
// with at least as many references (eviction and refused stores may only take away), and each
// publisher's pair count is exact.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <random>

#include "gtest/gtest.h"

#include "tests/common/children.h"
#include "tests/index/op_stream.h"
#include "tests/index/test_util.h"

namespace kvidx::index {
namespace {

using namespace ::kvidx::testing;

enum class Hashing { kShared, kPerPod };

// The engine hash an engine of this kind sends for a block.
uint64_t EngineHash(Hashing h, PublisherId p, BlockKey root, uint32_t prompt, uint32_t block) {
  switch (h) {
    case Hashing::kShared:
      return KeysOf(root, prompt).engine[block];
    case Hashing::kPerPod:
      return KeysOf(root, prompt).engine[block] * 31 + p + 1;
  }
  return 0;
}

absl::Status Apply(PrefixIndex& idx, PublisherId p, Hashing h, BlockKey root, const Op& op) {
  auto tokens = PromptTokens(op.prompt);
  switch (op.kind) {
    case Op::kStore: {
      std::vector<uint64_t> hash = {EngineHash(h, p, root, op.prompt, op.block)};
      StoreRequest req;
      req.tier = op.tier;
      if (op.block > 0) req.parent_engine_hash = EngineHash(h, p, root, op.prompt, op.block - 1);
      req.engine_hashes = hash;
      req.tokens = std::span<const uint32_t>(tokens).subspan(op.block * kBlockSize, kBlockSize);
      return idx.Store(p, req).status();
    }
    case Op::kRemove:
      return idx.Remove(p, op.tier, EngineHash(h, p, root, op.prompt, op.block));
    case Op::kClear:
      return idx.ClearPublisher(p);
  }
  return absl::OkStatus();
}

// What the publishers were told to hold: (key, publisher, tier) -> references. A removal
// resolves its hash through the block the publisher stored under it (one, for chained hashes).
class SubsetModel {
 public:
  explicit SubsetModel(BlockKey root) : root_(root) {}
  void Apply(PublisherId p, Hashing h, const Op& op) {
    if (op.kind == Op::kClear) {
      for (auto it = refs_.begin(); it != refs_.end();)
        it = std::get<1>(it->first) == p ? refs_.erase(it) : std::next(it);
      return;
    }
    uint64_t hash = EngineHash(h, p, root_, op.prompt, op.block);
    if (op.kind == Op::kStore) {
      BlockKey key = KeysOf(root_, op.prompt).keys[op.block];
      latest_[{p, hash}] = key;
      uint8_t& r = refs_[{key, p, op.tier}];
      if (r < 255) ++r;
      return;
    }
    auto m = latest_.find({p, hash});
    if (m == latest_.end()) return;
    auto it = refs_.find({m->second, p, op.tier});
    if (it != refs_.end() && --it->second == 0) refs_.erase(it);
  }
  // "" if every holding of the index is in the model with no more references than there.
  std::string NotASubset(const PrefixIndex& idx) const {
    std::ostringstream out;
    int shown = 0;
    for (const auto& e : idx.Dump()) {
      auto it = refs_.find({e.key, e.holder.publisher, e.holder.tier});
      if (it == refs_.end() || it->second < e.holder.refs) {
        if (shown++ < 5) {
          out << "index holds key " << std::hex << e.key << std::dec << " pub "
              << e.holder.publisher << " tier " << int(e.holder.tier) << " refs "
              << int(e.holder.refs) << ", model " << (it == refs_.end() ? 0 : it->second) << "\n";
        }
      }
    }
    return out.str();
  }

 private:
  BlockKey root_;
  std::map<std::tuple<BlockKey, PublisherId, uint8_t>, uint8_t> refs_;
  std::map<std::pair<PublisherId, uint64_t>, BlockKey> latest_;
};

struct Progress {
  std::atomic<uint64_t> started[4];
  std::atomic<int> parked;
};

// In writer 0: park inside its g_park_at-th stripe write (lock held, version odd).
uint64_t g_park_at = 0;
Progress* g_progress = nullptr;
void Park(bool /*finishing*/) {
  if (--g_park_at != 0) return;
  g_progress->parked.store(1);
  for (;;) pause();
}

TEST(SmallTablesTest, TwoKilledWritersNeverLeaveForeignDataWhenEveryTableFills) {
  Geometry g;
  g.blocks = 192;
  g.pairs = 320;
  g.holder_chunks = 24;
  g.engine_hashes = 96;
  g.publishers = 8;
  g.namespaces = 2;
  g.stripes = 4;
  ScopedSegment seg("small", g);
  PrefixIndex& idx = seg.index();
  NamespaceId ns = *idx.RegisterNamespace({.model = "m", .block_size = kBlockSize});
  BlockKey root = idx.namespace_slot(ns)->root;
  const Hashing hashing[4] = {Hashing::kShared, Hashing::kPerPod, Hashing::kPerPod,
                              Hashing::kShared};
  PublisherId pubs[4];
  for (int i = 0; i < 4; ++i) {
    pubs[i] = *idx.RegisterPublisher({.pod = "p" + std::to_string(i),
                                      .ns = ns,
                                      .quota_pairs = i == 3 ? 40u : 0u,
                                      .private_engine_hashes = hashing[i] != Hashing::kShared});
  }
  const size_t n = 60000;
  std::vector<std::vector<Op>> streams;
  for (int i = 0; i < 4; ++i) streams.push_back(GenerateStream(100 + i, n));
  SubsetModel model(root);
  uint64_t modelled[4] = {0, 0, 0, 0};

  auto* pr = static_cast<Progress*>(
      mmap(nullptr, sizeof(Progress), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(pr, MAP_FAILED);
  struct Unmap {
    Progress* p;
    ~Unmap() { munmap(p, sizeof(Progress)); }
  } unmap{pr};
  std::mt19937 rng(11);
  int parked = 0;  // cycles whose writer 0 died inside a stripe write
  for (int cycle = 0; cycle < 30; ++cycle) {
    uint64_t start[4];
    for (int i = 0; i < 4; ++i) {
      start[i] = idx.publisher_slot(pubs[i])->index.applied_ops;
      ASSERT_LT(start[i] + 2000, n);
      pr->started[i].store(start[i]);
    }
    pr->parked.store(0);
    const uint64_t park_at = 1 + rng() % 2000;
    // Writer w drives publishers 2w and 2w+1, alternating, and stops 1500 ops on.
    auto writer = [&](int w) {
      return ForkChild([&, w] {
        auto s = Segment::Attach(seg.name(), Segment::Access::kReadWrite);
        if (!s.ok()) return 2;
        PrefixIndex wi(s->get());
        if (w == 0) {  // writer 0 is killed inside a stripe write, by construction
          g_park_at = park_at;
          g_progress = pr;
          g_stripe_write_hook = Park;
        }
        for (uint64_t k = 0; k < 1500; ++k) {
          for (int j = 2 * w; j < 2 * w + 2; ++j) {
            uint64_t i = start[j] + k;
            pr->started[j].store(i + 1);
            absl::Status st = Apply(wi, pubs[j], hashing[j], root, streams[j][i]);
            if (!st.ok() && !absl::IsNotFound(st) && !absl::IsResourceExhausted(st)) return 3;
          }
        }
        for (;;) pause();
      });
    };
    ChildGuard w0 = writer(0), w1 = writer(1);
    uint64_t target = 1 + rng() % 1200;
    ASSERT_TRUE(WaitFor([&] { return pr->parked.load() == 1; }, std::chrono::seconds(60)));
    int s0 = w0.Kill();
    ASSERT_TRUE(WaitFor([&] { return pr->started[2].load() >= start[2] + target; },
                        std::chrono::seconds(60), std::chrono::microseconds(0)));
    int s1 = w1.Kill();
    ASSERT_TRUE(WIFSIGNALED(s0) && WIFSIGNALED(s1)) << "a writer failed: " << s0 << " " << s1;
    ++parked;
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(idx.RecoverPublisher(pubs[i]).ok());
    idx.RepairAbandonedStripes();
    ASSERT_EQ(idx.StripesMidUpdate(), 0u);
    for (int i = 0; i < 4; ++i) {
      uint64_t applied = idx.publisher_slot(pubs[i])->index.applied_ops;
      ASSERT_GE(applied, start[i]);
      for (; modelled[i] < applied; ++modelled[i])
        model.Apply(pubs[i], hashing[i], streams[i][modelled[i]]);
    }
    std::string diff = model.NotASubset(idx);
    ASSERT_EQ(diff, "") << "cycle " << cycle;
    std::map<PublisherId, uint64_t> pairs;
    for (const auto& e : idx.Dump()) ++pairs[e.holder.publisher];
    for (int i = 0; i < 4; ++i) EXPECT_EQ(idx.publisher_slot(pubs[i])->index.pairs, pairs[pubs[i]]);
    EXPECT_LE(pairs[pubs[3]], 40u) << "quota exceeded";
  }
  IndexStats st = idx.Stats();
  uint64_t conflicts = 0, refused = 0, evicted = 0, quota = 0;
  for (PublisherId p : pubs) {
    conflicts += idx.publisher_slot(p)->index.engine_hash_conflicts;
    refused += idx.publisher_slot(p)->index.engine_table_full;
    evicted += idx.publisher_slot(p)->index.evicted_pairs;
    quota += idx.publisher_slot(p)->index.quota_evictions;
  }
  std::printf(
      "ops applied %lu/%lu/%lu/%lu; evicted pairs %lu, quota evictions %lu, engine table "
      "full %lu (swept %lu), hash conflicts %lu, stripes repaired %lu\n",
      (unsigned long)modelled[0], (unsigned long)modelled[1], (unsigned long)modelled[2],
      (unsigned long)modelled[3], (unsigned long)evicted, (unsigned long)quota,
      (unsigned long)refused, (unsigned long)st.engine_swept, (unsigned long)conflicts,
      (unsigned long)st.stripe_repairs);
  // The tables did fill: otherwise this test checks nothing it claims to.
  EXPECT_GT(evicted, 0u);
  EXPECT_GT(quota, 0u);
  EXPECT_GT(refused + st.engine_swept, 0u);
  EXPECT_EQ(parked, 30);
  // Writer 0 died holding a stripe every cycle; writer 1 (still running) or the recovery
  // repaired it.
  EXPECT_GE(st.stripe_repairs, 30u);
}

}  // namespace
}  // namespace kvidx::index
