// An independent Python publisher (tests/integration/python_peer.py, Debian's python3-zmq and
// python3-msgpack, no code shared with kvidx-sim) is ingested by a real kvidx-ingest process;
// the index must hold exactly the block keys the peer computed itself.
#include <sys/stat.h>

#include <fstream>
#include <set>

#include "gtest/gtest.h"

#include "control/control_area.h"
#include "index/prefix_index.h"
#include "index/segment.h"
#include "tests/integration/process.h"

namespace kvidx::testing {
namespace {

TEST(PythonPeerTest, IndependentPublisherIsIngestedExactly) {
  std::string dir = "/tmp/kvidx-pypeer-" + std::to_string(getpid());
  mkdir(dir.c_str(), 0755);
  std::string segment = "kvidx-pypeer-" + std::to_string(getpid());
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
  Process peer(
      {"/usr/bin/python3", std::string(KVIDX_SOURCE_ROOT) + "/tests/integration/python_peer.py",
       dir + "/ports.txt", dir + "/expected.txt"},
      dir + "/peer.log");
  auto [pub_ep, replay_ep] = PeerEndpoints(dir + "/ports.txt");
  {
    std::ofstream cfg(dir + "/kvidx.toml");
    cfg << "[segment]\nname = \"" << segment
        << "\"\nblocks = 20000\npairs = 40000\npublishers = 8\nnamespaces = 4\nstripes = 16\n"
        << "[ingest]\nworkers = 1\nreplay_timeout_ms = 1000\nreconnect_initial_ms = 100\n"
        << "[[model]]\nname = \"peer-model\"\nblock_size = 4\n"
        << "[[publisher]]\npod = \"py\"\nmodel = \"peer-model\"\nendpoint = \"" << pub_ep
        << "\"\nreplay_endpoint = \"" << replay_ep << "\"\n";
  }
  Process worker({BuildPath("ingest/kvidx-ingest"), "--config", dir + "/kvidx.toml"},
                 dir + "/worker.log");
  ASSERT_FALSE(WaitForFile(dir + "/expected.txt", std::chrono::milliseconds(60000)).empty())
      << peer.Log();
  std::set<uint64_t> want;
  {
    std::ifstream in(dir + "/expected.txt");
    std::string k;
    while (in >> k) want.insert(std::stoull(k, nullptr, 16));
  }
  ASSERT_FALSE(want.empty());
  std::set<uint64_t> got;
  bool same = WaitFor(
      [&] {
        got.clear();
        auto seg = index::Segment::Attach(segment, index::Segment::Access::kReadOnly);
        if (!seg.ok()) return false;
        index::PrefixIndex idx(seg->get());
        for (const auto& e : idx.Dump()) got.insert(e.key);
        return got == want;
      },
      std::chrono::milliseconds(8000));
  size_t missing = 0;
  for (auto k : want) missing += !got.count(k);
  EXPECT_TRUE(same) << "peer holds " << want.size() << ", index " << got.size() << ", missing "
                    << missing << "\n"
                    << worker.Log();
  auto seg = index::Segment::Attach(segment, index::Segment::Access::kReadOnly);
  ASSERT_TRUE(seg.ok());
  index::PrefixIndex idx(seg->get());
  auto p = idx.FindPublisher("py", 0);
  ASSERT_TRUE(p.has_value());
  // The peer lost batches on purpose: they can only have come through the replay endpoint.
  EXPECT_GT(idx.publisher_slot(*p)->ingest.replay_batches, 0u);
  EXPECT_GT(idx.publisher_slot(*p)->index.clears, 0u);  // AllBlocksCleared
  EXPECT_EQ(idx.publisher_slot(*p)->ingest.decode_errors, 0u);
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(), 0);
  index::Segment::Remove(segment);
  control::ControlArea::Remove(control::ControlName(segment));
}

}  // namespace
}  // namespace kvidx::testing
