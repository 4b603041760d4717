#include "index/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"

#include "index/internal/stripe_layout.h"
#include "shared/clock.h"
#include "shared/status.h"

// Boost.Interprocess names the object; the mapping itself is done with mmap so that the
// read-only attachment is PROT_READ and the size is exactly what the layout says. Only this
// file and the index know the segment is Boost.Interprocess-compatible (/dev/shm/<name>).
#include <boost/interprocess/shared_memory_object.hpp>

namespace kvidx::index {
namespace bip = boost::interprocess;

namespace {

constexpr uint64_t kAlign = 64;

uint64_t AlignUp(uint64_t v, uint64_t a = kAlign) { return (v + a - 1) / a * a; }

uint32_t NextPow2(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return static_cast<uint32_t>(p);
}

bool IsPow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

void InitStripe(char* p, const StripeGeometry& sg) {
  const internal::StripeView v = internal::MakeStripeView(p, internal::BlockStripePartsOf(sg));
  auto* h = new (p) StripeHeader{};
  h->mu.Init();
  for (uint32_t i = 0; i < sg.buckets_per_stripe; ++i) v.buckets[i] = kNil;
  for (uint32_t i = 0; i < sg.blocks_per_stripe; ++i) {
    v.blocks[i] = BlockNode{};
    v.blocks[i].next = i + 1 < sg.blocks_per_stripe ? i + 1 : kNil;
    v.blocks[i].chunk_head = kNil;
    v.blocks[i].lru_prev = v.blocks[i].lru_next = kNil;
  }
  for (uint32_t i = 0; i < sg.chunks_per_stripe; ++i) {
    v.chunks[i] = HolderChunk{};
    v.chunks[i].next = i + 1 < sg.chunks_per_stripe ? i + 1 : kNil;
  }
  h->free_blocks = 0;
  h->free_chunks = sg.chunks_per_stripe > 0 ? 0 : kNil;
  h->lru_oldest = h->lru_newest = kNil;
}

void InitEngineStripe(char* p, const StripeGeometry& sg) {
  const internal::EngineView v = internal::MakeEngineView(p, internal::EngineStripePartsOf(sg));
  auto* h = new (p) EngineStripeHeader{};
  h->mu.Init();
  for (uint32_t i = 0; i < sg.engine_buckets_per_stripe; ++i) v.buckets[i] = kNil;
  for (uint32_t i = 0; i < sg.engine_nodes_per_stripe; ++i) {
    v.nodes[i] = EngineNode{};
    v.nodes[i].next = i + 1 < sg.engine_nodes_per_stripe ? i + 1 : kNil;
  }
  h->free_nodes = 0;
}

absl::Status CheckHeader(const SegmentHeader* h, size_t mapped,
                         const std::optional<Geometry>& expected) {
  if (mapped < sizeof(SegmentHeader) || h->magic != kSegmentMagic) {
    return absl::FailedPreconditionError("segment is not a kvidx index (bad magic)");
  }
  if (h->layout_version != kLayoutVersion || h->header_size != sizeof(SegmentHeader)) {
    return absl::FailedPreconditionError(
        absl::StrCat("segment layout version ", h->layout_version, " (header ", h->header_size,
                     " bytes); this build reads version ", kLayoutVersion, " (header ",
                     sizeof(SegmentHeader), " bytes)"));
  }
  if (h->total_size != mapped) {
    return absl::FailedPreconditionError(
        absl::StrCat("segment size ", mapped, " differs from its header's ", h->total_size));
  }
  auto layout = ComputeLayout(h->geometry);
  if (!layout.ok() || layout->total_size != h->total_size ||
      layout->stripes_offset != h->stripes_offset) {
    return absl::FailedPreconditionError("segment header geometry is inconsistent");
  }
  if (expected && !(*expected == h->geometry)) {
    const Geometry& g = h->geometry;
    return absl::FailedPreconditionError(absl::StrCat(
        "segment geometry differs from configuration: segment has blocks=", g.blocks,
        " pairs=", g.pairs, " chunks=", g.holder_chunks, " publishers=", g.publishers,
        " namespaces=", g.namespaces, " stripes=", g.stripes, "; configured blocks=",
        expected->blocks, " pairs=", expected->pairs, " publishers=", expected->publishers,
        " namespaces=", expected->namespaces, " stripes=", expected->stripes,
        " (stop the services and remove the segment from /dev/shm to re-create it)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SegmentLayout> ComputeLayout(const Geometry& g) {
  if (g.blocks == 0 || g.pairs == 0 || g.publishers == 0 || g.namespaces == 0) {
    return absl::InvalidArgumentError(
        "geometry: blocks, pairs, publishers, namespaces must be > 0");
  }
  if (!IsPow2(g.stripes))
    return absl::InvalidArgumentError("geometry: stripes must be a power of two");
  if (g.publishers > 65000 || g.namespaces > 65000) {
    return absl::InvalidArgumentError("geometry: at most 65000 publishers and namespaces");
  }
  SegmentLayout l{};
  StripeGeometry& sg = l.stripe_geometry;
  // Keys spread binomially over stripes (standard deviation about the square root of a
  // stripe's share): max(6 %, 6 standard deviations) + a constant of headroom keeps any stripe
  // from filling before the table does (eviction handles the rest). 6 % alone was 2 deviations
  // for 1,000-block stripes, and the pinned bench saw stripes evict at 89 % occupancy.
  auto headroom = [](uint64_t n) {
    return std::max<uint64_t>(n / 16, static_cast<uint64_t>(std::ceil(6 * std::sqrt(n)))) + 8;
  };
  uint64_t bps = CeilDiv(g.blocks, g.stripes);
  bps += headroom(bps);
  uint64_t pps = CeilDiv(g.pairs, g.stripes);
  pps += pps / 16 + 8;
  uint64_t chunks = g.holder_chunks != 0 ? g.holder_chunks : g.pairs / 5;
  uint64_t cps = CeilDiv(chunks, g.stripes);
  cps += cps / 16 + 8;
  // One entry per (engine hash, namespace, scope) whose block is live: one per block when the
  // engines share content hashes, one per pair when each engine hashes with its own seed
  // (vLLM without PYTHONHASHSEED). The default covers the second case.
  uint64_t engine =
      g.engine_hashes != 0 ? g.engine_hashes : std::max<uint64_t>(g.pairs, g.blocks + g.blocks / 4);
  uint32_t es = NextPow2(std::max<uint64_t>(1, std::min<uint64_t>(g.stripes, CeilDiv(engine, 64))));
  uint64_t eps = CeilDiv(engine, es);
  eps += headroom(eps);
  if (bps >= kNil || pps >= kNil || eps >= kNil || cps >= kNil) {
    return absl::InvalidArgumentError("geometry: too few stripes (a stripe holds < 2^32 nodes)");
  }
  sg.blocks_per_stripe = static_cast<uint32_t>(bps);
  sg.pairs_per_stripe = static_cast<uint32_t>(pps);
  sg.chunks_per_stripe = static_cast<uint32_t>(cps);
  sg.buckets_per_stripe = NextPow2(bps);
  sg.engine_stripes = es;
  sg.engine_nodes_per_stripe = static_cast<uint32_t>(eps);
  sg.engine_buckets_per_stripe = NextPow2(std::max<uint64_t>(1, eps / 2));

  uint64_t off = AlignUp(sizeof(SegmentHeader));
  l.namespaces_offset = off;
  off = AlignUp(off + uint64_t{g.namespaces} * sizeof(NamespaceSlot));
  l.publishers_offset = off;
  off = AlignUp(off + uint64_t{g.publishers} * sizeof(PublisherSlot));
  l.stripes_offset = off;
  l.stripe_stride = internal::BlockStripePartsOf(sg).stride;
  off += l.stripe_stride * g.stripes;
  l.engine_stripes_offset = off;
  l.engine_stripe_stride = internal::EngineStripePartsOf(sg).stride;
  off += l.engine_stripe_stride * es;
  l.total_size = AlignUp(off, 4096);
  return l;
}

namespace {

// Lays out every structure of a new segment (all but the `ready` flag).
void InitSegment(char* base, const SegmentLayout& l, const Geometry& geometry) {
  auto* h = new (base) SegmentHeader{};
  h->magic = kSegmentMagic;
  h->layout_version = kLayoutVersion;
  h->header_size = sizeof(SegmentHeader);
  h->total_size = l.total_size;
  h->geometry = geometry;
  h->stripe_geometry = l.stripe_geometry;
  h->namespaces_offset = l.namespaces_offset;
  h->publishers_offset = l.publishers_offset;
  h->stripes_offset = l.stripes_offset;
  h->stripe_stride = l.stripe_stride;
  h->engine_stripes_offset = l.engine_stripes_offset;
  h->engine_stripe_stride = l.engine_stripe_stride;
  h->created_wall_ns = WallNanos();
  h->creator_pid = getpid();
  h->admin_mu.Init();
  for (uint32_t i = 0; i < geometry.namespaces; ++i) {
    new (base + l.namespaces_offset + i * sizeof(NamespaceSlot)) NamespaceSlot{};
  }
  for (uint32_t i = 0; i < geometry.publishers; ++i) {
    new (base + l.publishers_offset + i * sizeof(PublisherSlot)) PublisherSlot{};
  }
  for (uint32_t s = 0; s < geometry.stripes; ++s) {
    InitStripe(base + l.stripes_offset + s * l.stripe_stride, l.stripe_geometry);
  }
  for (uint32_t s = 0; s < l.stripe_geometry.engine_stripes; ++s) {
    InitEngineStripe(base + l.engine_stripes_offset + s * l.engine_stripe_stride,
                     l.stripe_geometry);
  }
}

// Checks the segment file open on `fd` before it is mapped: its owner and mode (if `owner`),
// a size that can hold a header and, with `expected`, the configured geometry's size. Sets
// `*size`. Waits briefly for a creator still sizing it.
absl::Status CheckSegmentFile(int fd, const std::string& name,
                              const std::optional<Geometry>& expected,
                              const std::optional<ShmOwnership>& owner, size_t* size_out) {
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0) return absl::InternalError("fstat on segment failed");
  // The creator fallocates before it maps, so the size is final once non-zero.
  size_t size = static_cast<size_t>(st.st_size);
  for (int i = 0; i < 500 && size < sizeof(SegmentHeader); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    fstat(fd, &st);
    size = static_cast<size_t>(st.st_size);
  }
  if (owner) {
    KVIDX_RETURN_IF_ERROR(CheckShmOwnership(fd, absl::StrCat("segment /dev/shm/", name), *owner));
  }
  if (size < sizeof(SegmentHeader)) {
    return absl::FailedPreconditionError("segment is too small to be a kvidx index");
  }
  if (expected) {
    auto want = ComputeLayout(*expected);
    if (want.ok() && want->total_size != size) {
      return absl::FailedPreconditionError(
          absl::StrCat("segment geometry differs from configuration: /dev/shm/", name, " is ", size,
                       " bytes, the configured geometry makes ", want->total_size,
                       " (stop the services and remove the segment to re-create it)"));
    }
  }
  *size_out = size;
  return absl::OkStatus();
}

// The huge= option of the tmpfs mounted at /dev/shm (defined below).
std::string DevShmHugeOption();

// Sizes the new segment file `fd` to `size`, reserves every page and maps it. Where /dev/shm
// gives huge pages only on advice (huge=advise), posix_fallocate would reserve 4 KiB pages
// before any advice can be given: the file is sized, mapped, advised, then populated through
// the mapping (faults there take 2 MiB pages). Elsewhere, or where MADV_POPULATE_WRITE is
// unknown (before Linux 5.14), posix_fallocate reserves them (a huge=always mount gives huge
// pages that way too).
absl::StatusOr<char*> MapReserved(int fd, size_t size) {
  auto refuse = [size](int err) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot reserve ", size,
                     " bytes: ", std::error_code(err, std::generic_category()).message()));
  };
  const bool populate = DevShmHugeOption() == "advise";
  if (!populate || ftruncate(fd, static_cast<off_t>(size)) != 0) {
    if (int rc = posix_fallocate(fd, 0, static_cast<off_t>(size)); rc != 0) return refuse(rc);
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("mmap: ", std::error_code(errno, std::generic_category()).message()));
  }
  if (populate) {
    (void)madvise(p, size, MADV_HUGEPAGE);
    if (madvise(p, size, MADV_POPULATE_WRITE) != 0) {
      const int err = errno;
      const int rc = err == EINVAL ? posix_fallocate(fd, 0, static_cast<off_t>(size)) : err;
      if (rc != 0) {
        munmap(p, size);
        return refuse(rc);
      }
    }
  }
  return static_cast<char*>(p);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Segment>> Segment::Create(const std::string& name,
                                                         const Geometry& geometry, mode_t mode) {
  KVIDX_ASSIGN_OR_RETURN(SegmentLayout l, ComputeLayout(geometry));
  int fd = -1;
  try {
    bip::permissions perm(static_cast<int>(mode));
    bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write, perm);
    fd = dup(shm.get_mapping_handle().handle);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error) {
      return absl::AlreadyExistsError(absl::StrCat("segment ", name, " already exists"));
    }
    return absl::InternalError(absl::StrCat("cannot create segment ", name, ": ", e.what()));
  }
  if (fd < 0) return absl::InternalError("dup failed");
  // umask may have narrowed the mode; the configured one is what the service wants.
  fchmod(fd, mode);
  absl::StatusOr<char*> mapped = MapReserved(fd, l.total_size);
  close(fd);
  if (!mapped.ok()) {
    Remove(name);
    return absl::Status(mapped.status().code(),
                        absl::StrCat("segment ", name, ": ", mapped.status().message()));
  }
  char* base = *mapped;
  InitSegment(base, l, geometry);
  auto* h = reinterpret_cast<SegmentHeader*>(base);
  // Attachers spin on `ready`; the release publishes every initialising store above.
  __atomic_store_n(&h->ready, 1u, __ATOMIC_RELEASE);
  return std::unique_ptr<Segment>(new Segment(name, base, l.total_size, false));
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::AwaitAttach(const std::string& name,
                                                              Access access,
                                                              std::optional<Geometry> expected,
                                                              std::chrono::milliseconds timeout,
                                                              const std::atomic<bool>* stop,
                                                              std::optional<ShmOwnership> owner) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto s = Attach(name, access, expected, owner);
    if (!absl::IsNotFound(s.status())) return s;
    if (std::chrono::steady_clock::now() >= until || (stop != nullptr && stop->load())) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::Attach(const std::string& name, Access access,
                                                         std::optional<Geometry> expected,
                                                         std::optional<ShmOwnership> owner) {
  bool ro = access == Access::kReadOnly;
  int fd = -1;
  try {
    bip::shared_memory_object shm(bip::open_only, name.c_str(),
                                  ro ? bip::read_only : bip::read_write);
    fd = dup(shm.get_mapping_handle().handle);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error) {
      return absl::NotFoundError(absl::StrCat("no segment named ", name));
    }
    return absl::PermissionDeniedError(absl::StrCat("cannot open segment ", name, ": ", e.what()));
  }
  size_t size = 0;
  absl::Status checked = CheckSegmentFile(fd, name, expected, owner, &size);
  if (!checked.ok()) {
    if (fd >= 0) close(fd);
    return checked;
  }
  void* p = mmap(nullptr, size, ro ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED)
    return absl::InternalError(
        absl::StrCat("mmap: ", std::error_code(errno, std::generic_category()).message()));
  auto* h = static_cast<SegmentHeader*>(p);
  for (int i = 0; i < 3000 && __atomic_load_n(&h->ready, __ATOMIC_ACQUIRE) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  absl::Status st_check = __atomic_load_n(&h->ready, __ATOMIC_ACQUIRE) == 0
                              ? absl::UnavailableError("segment creator never finished")
                              : CheckHeader(h, size, expected);
  if (!st_check.ok()) {
    munmap(p, size);
    return st_check;
  }
  return std::unique_ptr<Segment>(new Segment(name, static_cast<char*>(p), size, ro));
}

absl::StatusOr<std::unique_ptr<Segment>> Segment::OpenOrCreate(const std::string& name,
                                                               const Geometry& geometry,
                                                               mode_t mode,
                                                               std::optional<ShmOwnership> owner) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto created = Create(name, geometry, mode);
    if (created.ok() || !absl::IsAlreadyExists(created.status())) return created;
    auto attached = Attach(name, Access::kReadWrite, geometry, owner);
    if (attached.ok() || !absl::IsNotFound(attached.status())) return attached;
  }
  return absl::UnavailableError("segment kept appearing and disappearing");
}

namespace {

// The word in [brackets] of a sysfs choice list, or the whole first line.
std::string SelectedChoice(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return "unreadable";
  size_t a = line.find('['), b = line.find(']');
  return a != std::string::npos && b != std::string::npos && b > a ? line.substr(a + 1, b - a - 1)
                                                                   : line;
}

// The huge= option of the tmpfs mounted at /dev/shm ("none" without one).
std::string DevShmHugeOption() {
  std::ifstream in("/proc/self/mounts");
  std::string dev, dir, type, opts, rest;
  std::string found = "no /dev/shm mount";
  // Mounts stacked on /dev/shm are listed in order: the last one is the one files land on.
  while (in >> dev >> dir >> type >> opts && std::getline(in, rest)) {
    if (dir != "/dev/shm") continue;
    size_t at = opts.find("huge=");
    size_t end = at == std::string::npos ? at : opts.find(',', at);
    found = at == std::string::npos
                ? "none"
                : opts.substr(at + 5, end == std::string::npos ? std::string::npos : end - at - 5);
  }
  return found;
}

}  // namespace

void Segment::AdviseHugePages() {
  // Asked before any page of this mapping is touched: where the mount says huge=advise, faults
  // through it may then take 2 MiB pages. Harmless (EINVAL) where THP is not built in.
  const int err = madvise(base_, size_, MADV_HUGEPAGE) == 0 ? 0 : errno;
  page_policy_ = absl::StrCat(
      "/dev/shm huge=", DevShmHugeOption(),
      ", shmem_enabled=", SelectedChoice("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
      ", madvise(MADV_HUGEPAGE) ",
      err == 0 ? std::string("accepted") : std::error_code(err, std::generic_category()).message());
}

Segment::PageReport Segment::Pages() const {
  std::lock_guard<std::mutex> lock(pages_mu_);
  const int64_t now = MonotonicNanos();
  if (pages_at_ns_ != 0 && now - pages_at_ns_ < kPagesMaxAgeNs) return pages_;
  PageReport r;
  r.policy = page_policy_;
  // The mapping's entry: a header line "start-end perms ..." then "Key: value kB" lines.
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool ours = false;
  const auto start = reinterpret_cast<uintptr_t>(base_);
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
        line.find(':') > line.find('-')) {
      if (ours) break;  // past our entry
      ours = std::strtoull(line.c_str(), nullptr, 16) == start;
      continue;
    }
    if (!ours) continue;
    auto kb = [&](const char* key) -> std::optional<uint64_t> {
      size_t n = std::strlen(key);
      if (line.compare(0, n, key) != 0) return std::nullopt;
      return std::strtoull(line.c_str() + n, nullptr, 10) * 1024;
    };
    if (auto v = kb("Rss:")) r.resident_bytes = *v;
    if (auto v = kb("ShmemPmdMapped:")) r.huge_page_bytes += *v;
    if (auto v = kb("FilePmdMapped:")) r.huge_page_bytes += *v;
  }
  pages_ = r;
  pages_at_ns_ = now;
  return r;
}

bool Segment::Remove(const std::string& name) {
  return bip::shared_memory_object::remove(name.c_str());
}

Segment::~Segment() { munmap(base_, size_); }

}  // namespace kvidx::index
