// The bulletin: a small area in each rank's segment where it publishes its block of a one-shot
// allgather (the engine's negotiation announcement, with small allreduces inline) for every
// same-host peer to read in place, instead of streaming it through N-1 rings as frames. One
// store of a sequence number publishes a block; a reader waits for each peer's number, then
// copies the block out. Two buffers alternate by round: a rank writes round k+2 only after
// every peer has published round k+1, which each does only after reading everyone's round k,
// so a buffer is never rewritten while a peer still reads it, with no acknowledgement needed.
// A block larger than a buffer leaves its header there and sends its payload as frames.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "ringflow/transport/shm/segment.h"

namespace rf::shm {

constexpr size_t kBulletinBuffer = 16 << 10;  // per round parity: header + inline payload

struct alignas(kCacheLine) BulletinControl {
  std::atomic<uint64_t> published;  // the last round this rank published (0: none yet)
};

constexpr size_t kBulletinBytes = sizeof(BulletinControl) + 2 * kBulletinBuffer;

inline BulletinControl* bulletin_of(const Segment& segment) {
  return reinterpret_cast<BulletinControl*>(
      segment.mapping.data() + bulletin_offset(static_cast<int>(segment.header()->ranks)));
}
inline char* bulletin_buffer(BulletinControl* control, uint64_t round) {
  return reinterpret_cast<char*>(control + 1) + (round & 1) * kBulletinBuffer;
}

}  // namespace rf::shm
