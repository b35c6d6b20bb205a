// One shared-memory segment per rank, in /dev/shm: a header, then one single-producer /
// single-consumer ring for each same-host peer that sends to this rank (the consumer's segment
// holds its incoming rings). Peers map it during the rendezvous; its creator unlinks it as soon
// as every peer has answered, so a killed job leaves nothing behind.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ringflow/common/mmap.h"

namespace rf::shm {

constexpr uint64_t kSegmentMagic = 0x524653484d534547;  // "RFSHMSEG"
constexpr size_t kCacheLine = 64;

// How the segment's owner waits; peers read it to decide how to wake it (shm_pair.cc).
enum WaitMode : uint32_t {
  kActive = 0,  // polling its rings: nothing to do
  kFutex = 1,   // asleep on `wake`: bump it and FUTEX_WAKE
  kEpoll = 2,   // asleep in epoll on its sockets (a TCP peer is pending too): a doorbell frame
  kIdle = 3,    // outside any wait (the engine polls the sockets): a doorbell for data only
};

struct alignas(kCacheLine) SegmentHeader {
  uint64_t magic;
  uint64_t nonce;  // proves to a peer that it mapped this rank's segment, not a namesake
  uint64_t ranks;
  uint64_t ring_bytes;
  uint64_t area_offset;  // the collective area (0: none; collective_area.h)
  uint64_t area_bytes;   // its size, control included
  alignas(kCacheLine) std::atomic<uint32_t> wake;  // futex word
  alignas(kCacheLine) std::atomic<uint32_t> mode;  // WaitMode
  // Then `ranks` offsets (0: no ring from that rank), each to a RingControl.
};

// Byte counters only ever grow; each side writes its own, on its own cache line.
struct RingControl {
  alignas(kCacheLine) std::atomic<uint64_t> head;  // bytes written by the producer
  alignas(kCacheLine) std::atomic<uint64_t> tail;  // bytes consumed
  // 1 while a doorbell frame for this ring is owed on the TCP connection: for data (producer ->
  // consumer) and for freed space (consumer -> producer). Cleared by whoever reads the frame.
  alignas(kCacheLine) std::atomic<uint32_t> data_rung;
  alignas(kCacheLine) std::atomic<uint32_t> space_rung;
  // Then ring_bytes of data.
};
static_assert(sizeof(RingControl) % kCacheLine == 0, "ring data starts on a cache line");

struct Segment {
  std::string path;  // empty once unlinked (or for a peer's segment)
  Mapping mapping;
  SegmentHeader* header() const { return reinterpret_cast<SegmentHeader*>(mapping.data()); }
  uint64_t* offsets() const { return reinterpret_cast<uint64_t*>(header() + 1); }
  // The ring whose producer is `rank`, or null.
  RingControl* ring_from(int rank) const;
  char* ring_data(RingControl* ring) const { return reinterpret_cast<char*>(ring + 1); }
};

// Creates this rank's segment with a ring from each of `producers` and a collective area of
// area_bytes (0: none) (mode 0600, O_EXCL, sized with posix_fallocate so a full /dev/shm fails
// here, not with SIGBUS later). Returns false and sets *why on failure.
bool create_segment(int rank, int ranks, const std::vector<int>& producers, size_t ring_bytes,
                    size_t area_bytes, Segment* out, std::string* why);
inline bool create_segment(int rank, int ranks, const std::vector<int>& producers,
                           size_t ring_bytes, Segment* out, std::string* why) {
  return create_segment(rank, ranks, producers, ring_bytes, 0, out, why);
}
// Maps a peer's segment by path and checks it is the one announced (size, magic, nonce).
bool open_segment(const std::string& path, size_t bytes, uint64_t nonce, Segment* out,
                  std::string* why);
void unlink_segment(Segment* segment);
size_t segment_bytes(int ranks, size_t producers, size_t ring_bytes, size_t area_bytes = 0);
// Where the bulletin (bulletin.h) starts: right after the header and its ring offsets.
size_t bulletin_offset(int ranks);

}  // namespace rf::shm
