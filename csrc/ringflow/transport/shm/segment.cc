#include "ringflow/transport/shm/segment.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <random>

#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/shm/bulletin.h"

namespace rf::shm {

namespace {

size_t round_up(size_t n) { return (n + kCacheLine - 1) / kCacheLine * kCacheLine; }

size_t header_bytes(int ranks) { return bulletin_offset(ranks) + kBulletinBytes; }

uint64_t random_u64() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

}  // namespace

size_t bulletin_offset(int ranks) {
  return round_up(sizeof(SegmentHeader) + sizeof(uint64_t) * static_cast<size_t>(ranks));
}

size_t segment_bytes(int ranks, size_t producers, size_t ring_bytes, size_t area_bytes) {
  return header_bytes(ranks) + producers * (sizeof(RingControl) + round_up(ring_bytes)) +
         round_up(area_bytes);
}

RingControl* Segment::ring_from(int rank) const {
  if (rank < 0 || static_cast<uint64_t>(rank) >= header()->ranks) return nullptr;
  const uint64_t offset = offsets()[rank];
  // A peer's segment is checked, not trusted: the ring must lie inside the mapping.
  const uint64_t ring = sizeof(RingControl) + header()->ring_bytes;
  if (offset == 0 || offset % kCacheLine != 0 || offset > mapping.size() ||
      ring > mapping.size() - offset) {
    return nullptr;
  }
  return reinterpret_cast<RingControl*>(mapping.data() + offset);
}

bool create_segment(int rank, int ranks, const std::vector<int>& producers, size_t ring_bytes,
                    size_t area_bytes, Segment* out, std::string* why) {
  const size_t bytes = segment_bytes(ranks, producers.size(), ring_bytes, area_bytes);
  std::string path = "/dev/shm/ringflow-" + std::to_string(::getpid()) + "-r" +
                     std::to_string(rank) + "-" + std::to_string(random_u64() & 0xffffffffffULL);
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    *why = "cannot create " + path + ": " + std::strerror(errno);
    return false;
  }
  // Reserve every page now: on a full tmpfs, touching an unbacked page later is a SIGBUS.
  int error = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes));
  if (error != 0) {
    ::unlink(path.c_str());
    *why =
        "cannot reserve " + std::to_string(bytes) + " bytes in /dev/shm (" + std::strerror(error) +
        "; RINGFLOW_SHM_RING_BYTES sizes the rings, RINGFLOW_SHM_AREA_BYTES the collective area)";
    return false;
  }
  Mapping mapping(fd.get(), bytes);
  if (!mapping.valid()) {
    ::unlink(path.c_str());
    *why = std::string("mmap of the shared-memory segment failed: ") + std::strerror(errno);
    return false;
  }
  auto* header = new (mapping.data()) SegmentHeader{};
  header->magic = kSegmentMagic;
  header->nonce = random_u64();
  header->ranks = static_cast<uint64_t>(ranks);
  header->ring_bytes = ring_bytes;
  header->mode.store(kIdle);
  uint64_t* offsets = reinterpret_cast<uint64_t*>(header + 1);
  new (mapping.data() + bulletin_offset(ranks)) BulletinControl{};
  size_t next = header_bytes(ranks);
  for (int producer : producers) {
    new (mapping.data() + next) RingControl{};
    offsets[producer] = next;
    next += sizeof(RingControl) + round_up(ring_bytes);
  }
  header->area_offset = area_bytes > 0 ? next : 0;  // zeroed by posix_fallocate
  header->area_bytes = round_up(area_bytes);
  out->path = std::move(path);
  out->mapping = std::move(mapping);
  return true;
}

bool open_segment(const std::string& path, size_t bytes, uint64_t nonce, Segment* out,
                  std::string* why) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  struct stat info{};
  if (!fd.valid() || ::fstat(fd.get(), &info) != 0) {
    *why = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  if (info.st_uid != ::geteuid() || static_cast<size_t>(info.st_size) != bytes) {
    *why = path + " is not the announced segment (owner or size differ)";
    return false;
  }
  Mapping mapping(fd.get(), bytes);
  if (!mapping.valid()) {
    *why = "cannot map " + path + ": " + std::strerror(errno);
    return false;
  }
  const auto* header = reinterpret_cast<const SegmentHeader*>(mapping.data());
  if (bytes < sizeof(SegmentHeader) || header->magic != kSegmentMagic || header->nonce != nonce ||
      header->ranks > (1u << 20) || header_bytes(static_cast<int>(header->ranks)) > bytes) {
    *why = path + " does not hold the announced nonce";
    return false;
  }
  out->mapping = std::move(mapping);
  return true;
}

void unlink_segment(Segment* segment) {
  if (segment->path.empty()) return;
  ::unlink(segment->path.c_str());
  segment->path.clear();
}

}  // namespace rf::shm
