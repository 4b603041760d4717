// The named shared-memory segment that holds the index: create, attach (read-write or
// read-only), remove.
//
// Create() sizes the segment from a Geometry, reserves every page up front (posix_fallocate on
// the tmpfs object, so running out of memory fails creation instead of faulting later),
// initialises every structure and finally marks the header ready. Attach() maps an existing
// segment and checks magic, layout version and (optionally) geometry: a mismatch is
// FAILED_PRECONDITION, never a reinterpretation. A read-only attachment maps the pages
// PROT_READ: any write through it faults.
//
// Thread-safety: a Segment is immutable after construction; the memory it maps is shared and
// its own rules are in layout.h.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

#include "index/layout.h"
#include "shared/shm_file.h"

namespace kvidx::index {

struct SegmentLayout {
  StripeGeometry stripe_geometry;
  uint64_t namespaces_offset;
  uint64_t publishers_offset;
  uint64_t stripes_offset;
  uint64_t stripe_stride;
  uint64_t engine_stripes_offset;
  uint64_t engine_stripe_stride;
  uint64_t total_size;
};

// Validates `g` and computes where everything goes. INVALID_ARGUMENT for a geometry that
// cannot be laid out (zero sizes, stripes not a power of two, indexes past 32 bits).
absl::StatusOr<SegmentLayout> ComputeLayout(const Geometry& g);

class Segment {
 public:
  enum class Access { kReadWrite, kReadOnly };

  // Creates segment `name` (fails with ALREADY_EXISTS if it exists). `mode` sets the
  // permissions of the shared-memory object (default: owner and group only).
  static absl::StatusOr<std::unique_ptr<Segment>> Create(const std::string& name,
                                                         const Geometry& geometry,
                                                         mode_t mode = 0640);
  // Attaches to an existing segment. NOT_FOUND if there is none; FAILED_PRECONDITION on a
  // foreign or other-version layout, when `expected` is given and differs (size included,
  // checked before mapping), or when `owner` is given and the object's owner or mode differ
  // (a squatted or widened segment is never mapped).
  static absl::StatusOr<std::unique_ptr<Segment>> Attach(
      const std::string& name, Access access, std::optional<Geometry> expected = std::nullopt,
      std::optional<ShmOwnership> owner = std::nullopt);
  // Attach() repeated until the segment exists (its creator may not have made it yet), for up
  // to `timeout` or until `*stop` (if given) is set: the one wait for a segment. NOT_FOUND if it
  // never appeared; any other error of Attach at once.
  static absl::StatusOr<std::unique_ptr<Segment>> AwaitAttach(
      const std::string& name, Access access, std::optional<Geometry> expected,
      std::chrono::milliseconds timeout, const std::atomic<bool>* stop = nullptr,
      std::optional<ShmOwnership> owner = std::nullopt);
  // Attaches if the segment exists, else creates it. Safe against concurrent callers. With
  // `owner`, an existing segment must have that owner and mode (see Attach).
  static absl::StatusOr<std::unique_ptr<Segment>> OpenOrCreate(
      const std::string& name, const Geometry& geometry, mode_t mode = 0640,
      std::optional<ShmOwnership> owner = std::nullopt);
  // Removes the name; mappings stay valid until unmapped. Returns false if it did not exist.
  static bool Remove(const std::string& name);

  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const std::string& name() const { return name_; }
  bool read_only() const { return read_only_; }
  size_t size() const { return size_; }
  char* base() const { return base_; }
  SegmentHeader* header() const { return reinterpret_cast<SegmentHeader*>(base_); }

  // How this process maps the segment: bytes resident, bytes mapped with 2 MiB pages (read from
  // /proc/self/smaps, so it is what the kernel did, not what was asked), and the policy that
  // decided it: the /dev/shm mount's huge= option, the host's shmem_enabled, and whether the
  // mapping's MADV_HUGEPAGE was accepted. Huge pages need huge=always|within_size|advise on the
  // mount (advise: with the madvise) or shmem_enabled=force; otherwise 4 KiB pages are used.
  // The kernel walks the whole process's page tables to write smaps (3 ms for a 925 MiB
  // segment here), so a report is reused for kPagesMaxAgeNs; the policy is read once, when the
  // segment is mapped.
  static constexpr int64_t kPagesMaxAgeNs = 5'000'000'000;
  struct PageReport {
    uint64_t resident_bytes = 0;
    uint64_t huge_page_bytes = 0;
    std::string policy;
  };
  PageReport Pages() const;

 private:
  Segment(std::string name, char* base, size_t size, bool read_only)
      : name_(std::move(name)), base_(base), size_(size), read_only_(read_only) {
    AdviseHugePages();
  }
  void AdviseHugePages();

  std::string name_;
  char* base_;
  size_t size_;
  bool read_only_;
  std::string page_policy_;  // set when mapped (AdviseHugePages)
  mutable std::mutex pages_mu_;
  mutable PageReport pages_;
  mutable int64_t pages_at_ns_ = 0;  // when pages_ was read (0: never)
};

}  // namespace kvidx::index
