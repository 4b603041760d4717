// ingest/kvbm_instances.h against a model, over many seeded schedules of instances speaking,
// shutting down and falling silent.
#include "ingest/kvbm_instances.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

namespace kvidx::ingest {
namespace {

TEST(InstanceTableTest, AlternatingInstancesKeepTheirSlots) {
  InstanceTable t(4, 1000);
  std::vector<uint32_t> expired;
  auto a = t.Take({0, 1}, 0, &expired);
  auto b = t.Take({0, 2}, 1, &expired);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->slot, 0u);
  EXPECT_TRUE(a->fresh);
  EXPECT_EQ(b->slot, 1u);
  for (int i = 2; i < 50; ++i) {
    auto r = t.Take({0, static_cast<uint64_t>(1 + i % 2)}, i, &expired);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->slot, static_cast<uint32_t>(i % 2));
    EXPECT_FALSE(r->fresh);
  }
  EXPECT_TRUE(expired.empty());
  t.Release(0);  // instance 1 shut down: the next new one is the configured publisher again
  auto c = t.Take({0, 3}, 60, &expired);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->slot, 0u);
  EXPECT_TRUE(c->fresh);
}

TEST(InstanceTableTest, InstancePodNames) {
  EXPECT_TRUE(IsInstancePod("pod-a#1", "pod-a"));
  EXPECT_TRUE(IsInstancePod("pod-a#15", "pod-a"));
  EXPECT_FALSE(IsInstancePod("pod-a", "pod-a"));
  EXPECT_FALSE(IsInstancePod("pod-a#", "pod-a"));
  EXPECT_FALSE(IsInstancePod("pod-a#x", "pod-a"));
  EXPECT_FALSE(IsInstancePod("pod-ab#1", "pod-a"));
}

TEST(InstanceTableTest, SilenceFreesOnlyWhileOthersSpeak) {
  InstanceTable t(2, 100);
  std::vector<uint32_t> expired;
  ASSERT_TRUE(t.Take({0, 1}, 0, &expired));
  ASSERT_TRUE(t.Take({0, 2}, 0, &expired));
  EXPECT_FALSE(t.Take({0, 3}, 50, &expired).has_value());  // full: refused
  ASSERT_TRUE(t.Take({0, 1}, 1000, &expired));             // 2 silent for 1000 while 1 spoke
  EXPECT_EQ(expired, std::vector<uint32_t>{1});
  auto r = t.Take({0, 3}, 1001, &expired);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->slot, 1u);
  InstanceTable never(1, 0);
  ASSERT_TRUE(never.Take({0, 1}, 0, &expired));
  EXPECT_FALSE(never.Take({0, 2}, int64_t{1} << 60, &expired).has_value());
}

// The model: live instances with their slot and last time heard.
struct Model {
  struct Live {
    uint32_t slot;
    int64_t last;
  };
  std::map<uint64_t, Live> live;
  uint32_t slots;
  int64_t idle;
};

TEST(InstanceTableTest, MatchesTheModelOverSeededSchedules) {
  for (uint32_t seed = 1; seed <= 3000; ++seed) {
    std::mt19937 rng(seed);
    const uint32_t slots = 1 + rng() % 4;
    const int64_t idle = rng() % 3 == 0 ? 0 : 5 + rng() % 50;
    InstanceTable t(slots, idle);
    Model m{{}, slots, idle};
    int64_t now = 0;
    for (int step = 0; step < 200; ++step) {
      now += rng() % 10;
      const uint64_t inst = 1 + rng() % 6;
      if (rng() % 8 == 0) {  // Shutdown of inst, if live
        auto it = m.live.find(inst);
        if (it != m.live.end()) {
          t.Release(it->second.slot);
          m.live.erase(it);
        }
        continue;
      }
      std::vector<uint32_t> expired, want_expired;
      for (auto it = m.live.begin(); it != m.live.end();) {
        if (it->first != inst && idle > 0 && now - it->second.last > idle) {
          want_expired.push_back(it->second.slot);
          it = m.live.erase(it);
        } else {
          ++it;
        }
      }
      auto r = t.Take({0, inst}, now, &expired);
      std::sort(expired.begin(), expired.end());
      std::sort(want_expired.begin(), want_expired.end());
      ASSERT_EQ(expired, want_expired) << "seed " << seed << " step " << step;
      auto it = m.live.find(inst);
      if (it != m.live.end()) {
        ASSERT_TRUE(r) << "seed " << seed;
        EXPECT_EQ(r->slot, it->second.slot);
        EXPECT_FALSE(r->fresh);
        it->second.last = now;
      } else if (m.live.size() == slots) {
        ASSERT_FALSE(r.has_value()) << "seed " << seed << " step " << step;
      } else {
        ASSERT_TRUE(r) << "seed " << seed;
        EXPECT_TRUE(r->fresh);
        uint32_t lowest = 0;
        for (bool taken = true; taken; ++lowest) {
          taken = false;
          for (auto& [i, l] : m.live) taken |= l.slot == lowest;
          if (!taken) break;
        }
        EXPECT_EQ(r->slot, lowest) << "seed " << seed;
        m.live[inst] = {r->slot, now};
      }
      ASSERT_EQ(t.live(), m.live.size());
      for (auto& [i, l] : m.live) ASSERT_EQ(t.at(l.slot)->lo, i);
    }
  }
}

}  // namespace
}  // namespace kvidx::ingest
