// The collective area: a region at the end of each rank's shared-memory segment that its
// same-host peers read directly, so an allreduce among them moves each byte through memory a
// few times instead of through the rings (collectives/shm_direct_allreduce.cc).
//
// Layout (the owner writes every field, its peers only read; the flag and each counter on its
// own cache line):
//   AreaControl                  waiting flag: the owner sleeps on its segment's futex
//   shm_with[ranks]              1 byte per job rank: the owner shares memory with it
//   progress[ranks][kStages]     the owner's counters towards each peer (see below)
//   data                         kAreaSlots slots of slot_bytes
//
// Counters are per ordered pair and only grow: progress[p][stage] counts the pieces the owner
// has taken through `stage` in the collectives it ran with rank p. Two ranks run their shared
// collectives in the same order and cut them into the same pieces, so at the start of one both
// have the same counts for the pair, and the owner's own count is the base both sides use. This
// holds because every collective on the areas publishes each of the three stages once per piece
// to every other member, whether or not that stage had work (allgather reduces nothing).
// Per-pair counting lets process sets with different members use the areas one after another.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "ringflow/common/deadline.h"
#include "ringflow/transport/shm/segment.h"
#include "ringflow/transport/tcp/spin_policy.h"

namespace rf::shm {

enum AreaStage : int {
  kFilled = 0,   // the owner's input for a piece is in its slot
  kReduced = 1,  // the owner's slice of the piece is reduced, in its slot
  kCopied = 2,   // the owner has read everything it needs of the piece from every slot
  kStages = 3,
};
constexpr int kAreaSlots = 3;  // enough that copying in piece k + 1 never waits (see the .cc)

struct alignas(kCacheLine) AreaControl {
  std::atomic<uint32_t> waiting;  // 1 while the owner may sleep on its segment's futex
};
struct alignas(kCacheLine) AreaCounter {
  std::atomic<uint64_t> value;
};

// Bytes of an area with `data_bytes` of slots for a job of `ranks`.
size_t collective_area_bytes(int ranks, size_t data_bytes);

class CollectiveAreas {
 public:
  // check_peer(p) throws kPeerFailure when p's connection says it died or aborted.
  CollectiveAreas(int rank, int ranks, const Segment& mine, const std::vector<Segment>& theirs,
                  SpinOptions spin, std::function<void(int)> check_peer,
                  std::atomic<int>* waiting_for);

  int rank() const { return rank_; }
  // Whether every pair among `ranks` (job ranks) shares memory and each has an area, as every
  // rank sees it alike (read from the areas themselves).
  bool covers(const std::vector<int>& ranks) const;
  // Slot bytes every one of `ranks` can hold (a multiple of the cache line).
  size_t slot_bytes(const std::vector<int>& ranks) const;
  char* slot(int owner, int index) const;
  uint64_t counter(int owner, int peer, AreaStage stage) const;
  // Sets this rank's counter towards each of `peers` and wakes those asleep.
  void publish(const std::vector<int>& peers, AreaStage stage, const std::vector<uint64_t>& values);
  // Until `owner`'s counter towards this rank reaches `target`: polls (yielding the core) for
  // the spin policy's budget, then sleeps on this rank's futex; reads `members`' connections
  // every kLivenessMs, so a dead peer throws.
  void wait(int owner, AreaStage stage, uint64_t target, const std::vector<int>& members,
            const Deadline& deadline, const char* what);
  // This rank's slot `index` may be overwritten once each reader (job rank, kCopied count) has
  // read it: recorded when the slot is filled, waited for before it is filled again, so no
  // collective ends with a barrier.
  void wait_slot_free(int index, const Deadline& deadline);
  void slot_filled(int index, std::vector<std::pair<int, uint64_t>> readers);

 private:
  struct View {
    SegmentHeader* header = nullptr;
    AreaControl* control = nullptr;
    const uint8_t* shm_with = nullptr;
    AreaCounter* progress = nullptr;
    char* data = nullptr;
    size_t data_bytes = 0;
  };
  void check_members(const std::vector<int>& members);

  int rank_;
  int ranks_;
  std::vector<View> views_;  // by job rank; header null: no area
  std::array<std::vector<std::pair<int, uint64_t>>, kAreaSlots> readers_;
  SpinPolicy spin_;  // adapts as the transport's: long waits (a busy core) sleep sooner
  std::function<void(int)> check_peer_;
  std::atomic<int>* waiting_for_;
};

}  // namespace rf::shm
