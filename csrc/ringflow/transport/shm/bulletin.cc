// ShmTransport's one-shot allgather through the bulletins (bulletin.h), and the wait for them:
// yield while peers are about to publish, then sleep on this rank's futex, which a peer wakes
// after publishing. A peer asleep on its sockets (between operations) gets a doorbell only
// once the yield budget is spent: one that runs Python comes to the round by itself, and a
// doorbell is two syscalls.
#include "ringflow/transport/shm/bulletin.h"

#include <sched.h>

#include <chrono>
#include <cstring>

#include "ringflow/common/check.h"
#include "ringflow/transport/shm/shm_transport.h"

namespace rf::shm {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How often a futex sleep wakes to read the sockets of the peers not yet published: a dead
// peer's EOF wakes nobody.
constexpr int kBulletinLivenessMs = 50;
// How long a waiter lets a peer idle in the engine come to the round before ringing its
// doorbell (one Python call takes a few microseconds).
constexpr int kDoorbellGraceUs = 20;

}  // namespace

bool ShmTransport::bulletin_ahead() const {
  if (!bulletin_) return false;
  for (int p = 0; p < size(); ++p) {
    // Only atomics here (input_hint runs on any thread); a dead peer's number stays put.
    if (p == rank_) continue;
    if (bulletin_of(theirs_[p])->published.load(std::memory_order_acquire) >
        bulletin_round_.load(std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

bool ShmTransport::oneshot_allgather(const std::vector<char>& header, const char* payload,
                                     size_t payload_bytes,
                                     const std::function<size_t(const char*)>& payload_size,
                                     std::vector<char>* headers,
                                     std::vector<std::vector<char>>* payloads, uint64_t tag,
                                     const Deadline& deadline) {
  if (!bulletin_ || header.size() > kBulletinBuffer) return false;
  const int n = size();
  const size_t header_bytes = header.size();
  const uint64_t round = bulletin_round_.load(std::memory_order_relaxed) + 1;
  bulletin_round_.store(round, std::memory_order_relaxed);
  BulletinControl* mine = bulletin_of(mine_);
  char* buffer = bulletin_buffer(mine, round);
  std::memcpy(buffer, header.data(), header_bytes);
  const bool spill = payload_bytes > kBulletinBuffer - header_bytes;
  if (!spill && payload_bytes) std::memcpy(buffer + header_bytes, payload, payload_bytes);
  mine->published.store(round, std::memory_order_release);
  // Peers asleep on their futex wait for this round: wake them now (the rest lazily).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (int p = 0; p < n; ++p) {
    if (p != rank_ && theirs_[p].header()->mode.load(std::memory_order_relaxed) == kFutex) {
      futex_wake_all(theirs_[p].header());
    }
  }
  if (spill) {
    for (int p = 0; p < n; ++p) {
      if (p != rank_) shm_[p]->post_send(payload, payload_bytes, tag);
    }
  }
  // Sized, not rebuilt: the engine passes the same vectors every round, so their capacity stays.
  headers->resize(n * header_bytes);
  payloads->resize(n);
  std::memcpy(headers->data() + rank_ * header_bytes, header.data(), header_bytes);
  (*payloads)[rank_].assign(payload, payload + payload_bytes);
  thread_local std::vector<char> got;
  got.assign(n, 0);
  got[rank_] = 1;
  // What `take` needs, behind one pointer: a capture that small needs no heap std::function.
  struct Take {
    ShmTransport* self;
    uint64_t round, tag;
    size_t header_bytes;
    std::vector<char>* headers;
    std::vector<std::vector<char>>* payloads;
    const std::function<size_t(const char*)>* payload_size;
    bool received_frames = false;
  } state{this, round, tag, header_bytes, headers, payloads, &payload_size};
  wait_bulletins(got, deadline, [s = &state](int p) {
    // Copied out, then checked: the peer's buffer is read once, whatever it holds.
    const char* theirs = bulletin_buffer(bulletin_of(s->self->theirs_[p]), s->round);
    char* at = s->headers->data() + p * s->header_bytes;
    std::memcpy(at, theirs, s->header_bytes);
    const size_t bytes = (*s->payload_size)(at);  // throws kPeerFailure for a malformed header
    std::vector<char>& out = (*s->payloads)[p];
    out.resize(bytes);
    if (bytes <= kBulletinBuffer - s->header_bytes) {
      if (bytes) std::memcpy(out.data(), theirs + s->header_bytes, bytes);
    } else {
      s->self->shm_[p]->post_recv(out.data(), bytes, s->tag, nullptr);
      s->self->active_.push_back(p);
      s->received_frames = true;
    }
  });
  const bool received_frames = state.received_frames;
  if (spill) {
    for (int p = 0; p < n; ++p) {
      if (p != rank_) active_.push_back(p);
    }
  }
  if (spill || received_frames) wait_all(deadline);
  return true;
}

void ShmTransport::wait_bulletins(std::vector<char>& got, const Deadline& deadline,
                                  const std::function<void(int)>& take) {
  using Clock = std::chrono::steady_clock;
  const uint64_t round = bulletin_round_.load(std::memory_order_relaxed);
  const int n = size();
  SegmentHeader* me = mine_.header();
  me->mode.store(kActive, std::memory_order_seq_cst);
  // The first peer not published yet (taking each that has), or -1 when all have.
  auto pending = [&]() {
    int first = -1;
    for (int p = 0; p < n; ++p) {
      if (got[p]) continue;
      if (bulletin_of(theirs_[p])->published.load(std::memory_order_acquire) >= round) {
        got[p] = 1;
        take(p);
      } else if (first < 0) {
        first = p;
      }
    }
    return first;
  };
  const auto start = Clock::now();
  auto finish = [&] {
    waiting_for_.store(-1, std::memory_order_relaxed);
    bulletin_spin_.waited(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
  };
  bool slept = false;
  bool rang = false;
  if (bulletin_poll_ns_ > 0 && pending() >= 0) {
    const auto poll_until = start + std::chrono::nanoseconds(bulletin_poll_ns_);
    do {
      for (int i = 0; i < 16; ++i) cpu_relax();
    } while (pending() >= 0 && Clock::now() < poll_until);
  }
  while (true) {
    int waiting = pending();
    if (waiting < 0) return finish();
    if (slept) {
      // Only a sleep can have missed an EOF or an abort frame: no syscall while peers publish.
      for (int p = 0; p < n; ++p) {
        if (got[p]) continue;
        try {
          shm_[p]->read_socket(false);
        } catch (const Error&) {
          waiting_for_.store(p, std::memory_order_relaxed);
          throw;
        }
      }
    }
    // Peers asleep on their sockets (or idle in the engine) learn of the round by a doorbell,
    // after a grace in which one that is running comes by itself.
    auto ring = [&] {
      rang = true;
      for (int p = 0; p < n; ++p) {
        if (!got[p]) shm_[p]->wake_for_data();
      }
    };
    const auto now = Clock::now();
    const auto until = now + std::chrono::microseconds(bulletin_spin_.budget_us());
    const auto grace = now + std::chrono::microseconds(kDoorbellGraceUs);
    while (waiting >= 0 && Clock::now() < until) {
      ::sched_yield();  // never a pure spin: the peer may need this core to publish
      waiting = pending();
      if (waiting >= 0 && !rang && Clock::now() >= grace) ring();
    }
    if (waiting < 0) return finish();
    waiting_for_.store(waiting, std::memory_order_relaxed);
    if (!rang) ring();
    RF_CHECK(!deadline.expired(), kTimeout)
        << "timed out waiting for rank " << waiting
        << "'s negotiation announcement (shared memory, round " << round << ")";
    const uint32_t seen = me->wake.load(std::memory_order_seq_cst);
    me->mode.store(kFutex, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // Rechecked after announcing the sleep: a peer that published before it saw the mode does
    // not wake this rank, so what it published must be seen here.
    if (pending() >= 0) {
      futex_wait(me, seen, std::max(0, std::min(kBulletinLivenessMs, deadline.remaining_ms())));
    }
    me->mode.store(kActive, std::memory_order_seq_cst);
    slept = true;
  }
}

}  // namespace rf::shm
