// Helpers for tests that use a real shared-memory segment: unique names, removal on exit.
#pragma once

#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>

#include "gtest/gtest.h"

#include "index/prefix_index.h"
#include "index/segment.h"

namespace kvidx::testing {

inline std::string UniqueSegmentName(const std::string& what) {
  static std::atomic<int> counter{0};
  return "kvidx-test-" + what + "-" + std::to_string(getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

inline index::Geometry SmallGeometry() {
  index::Geometry g;
  g.blocks = 4096;
  g.pairs = 16384;
  g.publishers = 64;
  g.namespaces = 8;
  g.stripes = 16;
  return g;
}

// Creates a segment and removes its name when destroyed.
class ScopedSegment {
 public:
  explicit ScopedSegment(const std::string& what, index::Geometry g = SmallGeometry())
      : name_(UniqueSegmentName(what)) {
    index::Segment::Remove(name_);
    auto s = index::Segment::Create(name_, g);
    if (!s.ok()) {
      ADD_FAILURE() << s.status();
      return;
    }
    segment_ = std::move(*s);
    index_ = std::make_unique<index::PrefixIndex>(segment_.get());
  }
  ~ScopedSegment() { index::Segment::Remove(name_); }

  const std::string& name() const { return name_; }
  index::Segment* segment() { return segment_.get(); }
  index::PrefixIndex& index() { return *index_; }

 private:
  std::string name_;
  std::unique_ptr<index::Segment> segment_;
  std::unique_ptr<index::PrefixIndex> index_;
};

}  // namespace kvidx::testing
