#include "ringflow/transport/shm/collective_area.h"

#include <sched.h>

#include <algorithm>
#include <chrono>

#include "ringflow/common/check.h"
#include "ringflow/transport/shm/shm_pair.h"

namespace rf::shm {

namespace {

// A sleeper wakes this often to read its peers' connections: a dead peer's EOF wakes nobody.
constexpr int kLivenessMs = 50;

size_t round_up(size_t n) { return (n + kCacheLine - 1) / kCacheLine * kCacheLine; }

size_t control_bytes(int ranks) {
  return sizeof(AreaControl) + round_up(static_cast<size_t>(ranks)) +
         sizeof(AreaCounter) * kStages * static_cast<size_t>(ranks);
}

}  // namespace

size_t collective_area_bytes(int ranks, size_t data_bytes) {
  return control_bytes(ranks) + round_up(data_bytes);
}

CollectiveAreas::CollectiveAreas(int rank, int ranks, const Segment& mine,
                                 const std::vector<Segment>& theirs, SpinOptions spin,
                                 std::function<void(int)> check_peer, std::atomic<int>* waiting_for)
    : rank_(rank),
      ranks_(ranks),
      views_(static_cast<size_t>(ranks)),
      spin_(spin),
      check_peer_(std::move(check_peer)),
      waiting_for_(waiting_for) {
  for (int r = 0; r < ranks; ++r) {
    const Segment& segment = r == rank ? mine : theirs[r];
    if (!segment.mapping.valid()) continue;
    SegmentHeader* header = segment.header();
    // A peer's header is checked, not trusted: the area must lie inside its mapping.
    const uint64_t offset = header->area_offset;
    const uint64_t bytes = header->area_bytes;
    const size_t size = segment.mapping.size();
    if (offset == 0 || offset % kCacheLine != 0 || offset > size || bytes > size - offset ||
        bytes < control_bytes(ranks) || header->ranks != static_cast<uint64_t>(ranks)) {
      continue;
    }
    char* base = segment.mapping.data() + offset;
    View& view = views_[r];
    view.header = header;
    view.control = reinterpret_cast<AreaControl*>(base);
    view.shm_with = reinterpret_cast<const uint8_t*>(base + sizeof(AreaControl));
    view.progress = reinterpret_cast<AreaCounter*>(base + sizeof(AreaControl) +
                                                   round_up(static_cast<size_t>(ranks)));
    view.data = base + control_bytes(ranks);
    view.data_bytes = bytes - control_bytes(ranks);
  }
  if (views_[rank].header) {
    // Written before this rank's first frame: a peer reads them only after receiving one.
    auto* shm_with = const_cast<uint8_t*>(views_[rank].shm_with);
    for (int r = 0; r < ranks; ++r) {
      shm_with[r] = r == rank || (theirs[r].mapping.valid() && views_[r].header) ? 1 : 0;
    }
  }
}

bool CollectiveAreas::covers(const std::vector<int>& ranks) const {
  for (int a : ranks) {
    if (a < 0 || a >= ranks_ || !views_[a].header) return false;
    for (int b : ranks) {
      if (!views_[a].shm_with[b]) return false;
    }
  }
  return true;
}

size_t CollectiveAreas::slot_bytes(const std::vector<int>& ranks) const {
  size_t smallest = ~size_t{0};
  for (int r : ranks) smallest = std::min(smallest, views_[r].data_bytes);
  return smallest / kAreaSlots / kCacheLine * kCacheLine;
}

char* CollectiveAreas::slot(int owner, int index) const {
  const View& view = views_[owner];
  return view.data +
         static_cast<size_t>(index) * (view.data_bytes / kAreaSlots / kCacheLine * kCacheLine);
}

uint64_t CollectiveAreas::counter(int owner, int peer, AreaStage stage) const {
  return views_[owner].progress[peer * kStages + stage].value.load(std::memory_order_acquire);
}

void CollectiveAreas::publish(const std::vector<int>& peers, AreaStage stage,
                              const std::vector<uint64_t>& values) {
  AreaCounter* mine = views_[rank_].progress;
  for (size_t i = 0; i < peers.size(); ++i) {
    if (peers[i] == rank_) continue;
    mine[peers[i] * kStages + stage].value.store(values[i], std::memory_order_release);
  }
  // Pairs with the sleeper's flag store, fence and recheck (wait()): either it sees the new
  // count, or this rank sees that it may sleep and wakes it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (int peer : peers) {
    if (peer == rank_) continue;
    if (views_[peer].control->waiting.load(std::memory_order_relaxed)) {
      futex_wake_all(views_[peer].header);
    }
  }
}

void CollectiveAreas::check_members(const std::vector<int>& members) {
  for (int peer : members) {
    if (peer == rank_) continue;
    try {
      check_peer_(peer);
    } catch (const Error&) {
      waiting_for_->store(peer, std::memory_order_relaxed);
      throw;
    }
  }
}

void CollectiveAreas::wait(int owner, AreaStage stage, uint64_t target,
                           const std::vector<int>& members, const Deadline& deadline,
                           const char* what) {
  using Clock = std::chrono::steady_clock;
  auto ready = [&] { return counter(owner, rank_, stage) >= target; };
  if (ready()) return;
  waiting_for_->store(owner, std::memory_order_relaxed);
  View& me = views_[rank_];
  const auto start = Clock::now();
  auto checked = start;
  while (true) {
    const auto yield_until = Clock::now() + std::chrono::microseconds(spin_.budget_us());
    while (!ready() && Clock::now() < yield_until) {
      ::sched_yield();  // lets a peer on this core finish its piece
    }
    if (!ready()) {
      const uint32_t seen = me.header->wake.load(std::memory_order_seq_cst);
      me.control->waiting.store(1, std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (!ready()) {
        futex_wait(me.header, seen, std::max(0, std::min(kLivenessMs, deadline.remaining_ms())));
      }
      me.control->waiting.store(0, std::memory_order_relaxed);
    }
    // The counter first: what a peer published before it died still counts.
    if (ready()) break;
    if (Clock::now() - checked >= std::chrono::milliseconds(kLivenessMs / 2)) {
      check_members(members);
      checked = Clock::now();
    }
    RF_CHECK(!deadline.expired(), kTimeout)
        << "timed out waiting for rank " << owner << " in the shared-memory " << what
        << " (its counter " << counter(owner, rank_, stage) << ", " << target << " needed)";
  }
  spin_.waited(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
  waiting_for_->store(-1, std::memory_order_relaxed);
}

void CollectiveAreas::wait_slot_free(int index, const Deadline& deadline) {
  for (const auto& [reader, count] : readers_[index]) {
    wait(reader, kCopied, count, {reader}, deadline, "allreduce (a slot still being read)");
  }
  readers_[index].clear();
}

void CollectiveAreas::slot_filled(int index, std::vector<std::pair<int, uint64_t>> readers) {
  readers_[index] = std::move(readers);
}

}  // namespace rf::shm
