#include "ringflow/transport/shm/shm_transport.h"

#include <sched.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#include "ringflow/common/check.h"
#include "ringflow/common/log.h"

namespace rf::shm {

namespace {

// A futex sleep wakes this often to read the sockets: a dead peer's EOF wakes nobody else.
constexpr int kLivenessMs = 50;
// The bulletin's yield budget before a futex sleep (bulletin.cc). With a core per rank,
// yielding costs little and a sleep and wake-up ~5-20 us on each side. With more ranks on the
// host than cores they may run on, a yielding waiter keeps a core from the rank that must
// publish (or hands it to another process for a whole slice): there it sleeps almost at once.
// 8-byte allreduce, 4 ranks on 2 loaded cores: 200 us gave 240-570 us per op, 20 us 140-170.
constexpr int kBulletinSpinUs = 200;
constexpr int kOversubscribedSpinUs = 20;

int bulletin_spin_us(int local_ranks) {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const int usable =
      ::sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : local_ranks;
  return local_ranks > usable ? kOversubscribedSpinUs : kBulletinSpinUs;
}

// Before that, with a core per rank only: a peer in step publishes within a microsecond or
// two, and polling that long without a syscall sees it sooner than yields (each a syscall).
constexpr int kBulletinPollNs = 3000;

bool oversubscribed(int local_ranks) {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  return ::sched_getaffinity(0, sizeof(cpus), &cpus) != 0 || local_ranks > CPU_COUNT(&cpus);
}

}  // namespace

ShmTransport::ShmTransport(int rank, std::vector<UniqueFd> sockets, Segment mine,
                           std::vector<Segment> theirs, SpinOptions spin,
                           std::vector<std::vector<UniqueFd>> stripes)
    : rank_(rank),
      spin_(spin),
      mine_(std::move(mine)),
      theirs_(std::move(theirs)),
      shm_(sockets.size()),
      tcp_(sockets.size()),
      epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)),
      bulletin_spin_(SpinOptions{}) {
  RF_CHECK(epoll_fd_.valid(), kPeerFailure) << "epoll_create1: " << std::strerror(errno);
  for (size_t p = 0; p < sockets.size(); ++p) {
    if (!sockets[p].valid()) continue;
    std::vector<int> fds{sockets[p].get()};
    if (theirs_[p].mapping.valid()) {
      shm_[p] = std::make_unique<ShmPair>(rank, static_cast<int>(p), std::move(sockets[p]), mine_,
                                          theirs_[p]);
    } else {
      // Further stripes serve TCP peers only; a shared-memory peer's are closed on both sides.
      std::vector<UniqueFd> streams;
      streams.push_back(std::move(sockets[p]));
      if (p < stripes.size()) {
        for (auto& fd : stripes[p]) streams.push_back(std::move(fd));
      }
      tcp_[p] = std::make_unique<TcpPair>(static_cast<int>(p), std::move(streams));
      fds = tcp_[p]->fds();
    }
    for (int fd : fds) {
      epoll_event event{};
      event.events = EPOLLIN | EPOLLOUT | EPOLLET;  // as TcpTransport; doorbells are EPOLLIN
      event.data.u32 = static_cast<uint32_t>(p);
      RF_CHECK(::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &event) == 0, kPeerFailure)
          << "epoll_ctl: " << std::strerror(errno);
    }
  }
  auto check_peer = [this](int peer) {
    ShmPair* pair = shm_[peer].get();
    if (pair) pair->read_socket(false);  // throws what the connection said
    RF_CHECK(pair && !pair->failed(), kPeerFailure)
        << "rank " << rank_ << " has no connection to rank " << peer << " any more";
  };
  areas_ = std::make_unique<CollectiveAreas>(rank, size(), mine_, theirs_, spin, check_peer,
                                             &waiting_for_);
  bulletin_ = true;
  int local_ranks = 1;
  for (size_t p = 0; p < shm_.size(); ++p) {
    bulletin_ = bulletin_ && (p == static_cast<size_t>(rank) || shm_[p]);
    if (shm_[p]) ++local_ranks;
  }
  // RINGFLOW_SPIN_US=0 (never poll) holds here too.
  bulletin_spin_ = SpinPolicy(SpinOptions{spin.max_us == 0 ? 0 : bulletin_spin_us(local_ranks)});
  bulletin_poll_ns_ = spin.max_us == 0 || oversubscribed(local_ranks) ? 0 : kBulletinPollNs;
}

ShmTransport::~ShmTransport() = default;

void ShmTransport::check_peer(int peer) const {
  RF_CHECK(peer >= 0 && peer < size() && (shm_[peer] || tcp_[peer]), kInternal)
      << "rank " << rank_ << " has no connection to rank " << peer;
}

const char* ShmTransport::peer_kind(int peer) const {
  if (peer < 0 || peer >= size()) return "";
  return shm_[peer] ? "shm" : tcp_[peer] ? "tcp" : "self";
}

uint64_t ShmTransport::post_send(int peer, const void* data, size_t len, uint64_t tag) {
  check_peer(peer);
  active_.push_back(peer);
  return shm_[peer] ? shm_[peer]->post_send(data, len, tag) : tcp_[peer]->post_send(data, len, tag);
}

uint64_t ShmTransport::post_recv(int peer, void* data, size_t len, uint64_t tag,
                                 size_t* actual_len) {
  check_peer(peer);
  active_.push_back(peer);
  return shm_[peer] ? shm_[peer]->post_recv(data, len, tag, actual_len)
                    : tcp_[peer]->post_recv(data, len, tag, actual_len);
}

bool ShmTransport::progress_active(bool slept) {
  std::sort(active_.begin(), active_.end());
  active_.erase(std::unique(active_.begin(), active_.end()), active_.end());
  auto idle = [this, slept](int peer) {
    try {
      if (ShmPair* p = shm_[peer].get()) {
        // The rings first: what a peer wrote before it left counts, as bytes before a FIN do.
        bool sends_idle = p->progress_sends();
        bool recvs_idle = p->progress_recvs();
        // The connection only matters after a sleep (an EOF or abort wakes nobody on a futex)
        // or when a doorbell waits there: no syscall while the rings move.
        if (!(sends_idle && recvs_idle) && (slept || p->socket_owed())) {
          p->read_socket(false);
          recvs_idle = p->progress_recvs();  // a doorbell may announce more
        }
        return sends_idle && recvs_idle;
      }
      TcpPair& p = *tcp_[peer];
      bool sends_idle = p.progress_sends();
      bool recvs_idle = p.progress_recvs();
      return sends_idle && recvs_idle;
    } catch (const Error&) {
      waiting_for_.store(peer, std::memory_order_relaxed);
      throw;
    }
  };
  active_.erase(std::remove_if(active_.begin(), active_.end(), idle), active_.end());
  return active_.empty();
}

void ShmTransport::sleep(const Deadline& deadline) {
  SegmentHeader* me = mine_.header();
  const bool futex = std::all_of(active_.begin(), active_.end(),
                                 [this](int peer) { return shm_[peer] != nullptr; });
  const uint32_t seen = me->wake.load(std::memory_order_seq_cst);
  me->mode.store(futex ? kFutex : kEpoll, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Recheck after announcing the sleep: a peer that published before it saw the mode will not
  // wake this rank, so what it published must be seen here.
  if (!progress_active(false)) {
    if (futex) {
      futex_wait(me, seen, std::max(0, std::min(kLivenessMs, deadline.remaining_ms())));
    } else {
      epoll_event events[64];
      int ready = ::epoll_wait(epoll_fd_.get(), events, 64, deadline.remaining_ms());
      if (ready < 0 && errno != EINTR) {
        me->mode.store(kActive, std::memory_order_seq_cst);
        RF_THROW(kPeerFailure) << "epoll_wait: " << std::strerror(errno);
      }
    }
  }
  me->mode.store(kActive, std::memory_order_seq_cst);
}

template <typename Finished>
void ShmTransport::progress_until(Finished finished, const Deadline& deadline) {
  using Clock = std::chrono::steady_clock;
  mine_.header()->mode.store(kActive, std::memory_order_seq_cst);
  const auto start = Clock::now();
  auto done = [&] {
    if (!finished()) return false;
    waiting_for_.store(-1, std::memory_order_relaxed);
    spin_.waited(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
    return true;
  };
  bool slept = false;
  while (true) {
    progress_active(slept);
    if (done()) return;
    if (spin_.budget_us() > 0) {
      auto until = Clock::now() + std::chrono::microseconds(spin_.budget_us());
      while (Clock::now() < until) {
        ::sched_yield();  // lets a peer on this core move its side of the ring
        progress_active(false);
        if (done()) return;
      }
    }
    waiting_for_.store(active_.empty() ? -1 : active_.front(), std::memory_order_relaxed);
    for (int peer : active_) {
      if (shm_[peer] ? shm_[peer]->receiving() : tcp_[peer]->receiving()) {
        waiting_for_.store(peer, std::memory_order_relaxed);
        break;
      }
    }
    RF_CHECK(!deadline.expired(), kTimeout) << "timed out waiting for " << pending_summary();
    sleep(deadline);
    slept = true;
  }
}

void ShmTransport::wait_send(int peer, uint64_t ticket, const Deadline& deadline) {
  check_peer(peer);
  if (shm_[peer]) {
    const ShmPair& target = *shm_[peer];
    progress_until([&] { return target.sends_done() > ticket; }, deadline);
  } else {
    const TcpPair& target = *tcp_[peer];
    progress_until([&] { return target.sends_done() > ticket; }, deadline);
  }
}

void ShmTransport::wait_recv(int peer, uint64_t ticket, const Deadline& deadline) {
  check_peer(peer);
  if (shm_[peer]) {
    const ShmPair& target = *shm_[peer];
    progress_until([&] { return target.recvs_done() > ticket; }, deadline);
  } else {
    const TcpPair& target = *tcp_[peer];
    progress_until([&] { return target.recvs_done() > ticket; }, deadline);
  }
}

void ShmTransport::wait_all(const Deadline& deadline) {
  progress_until([this] { return active_.empty(); }, deadline);
}

std::string ShmTransport::pending_summary() const {
  std::ostringstream text;
  for (size_t i = 0; i < active_.size(); ++i) {
    const int peer = active_[i];
    text << (i ? ", " : "")
         << (shm_[peer] ? shm_[peer]->pending_summary() : tcp_[peer]->pending_summary());
  }
  return text.str();
}

std::vector<int> ShmTransport::peer_fds() const {
  std::vector<int> fds;
  for (int p = 0; p < size(); ++p) {
    if (peer_fd(p) >= 0) fds.push_back(peer_fd(p));
  }
  return fds;
}

int ShmTransport::peer_fd(int peer) const {
  if (peer < 0 || peer >= size()) return -1;
  if (shm_[peer]) return shm_[peer]->fd();
  return tcp_[peer] ? tcp_[peer]->fd() : -1;
}

bool ShmTransport::has_buffered_input() const {
  return const_cast<ShmTransport*>(this)->idle_check();
}

bool ShmTransport::has_buffered_input_from(int peer) const {
  if (peer < 0 || peer >= size()) return false;
  if (tcp_[peer] && tcp_[peer]->has_buffered_input()) return true;
  return shm_[peer] && !shm_[peer]->failed() && shm_[peer]->has_input();
}

bool ShmTransport::idle_check() {
  mine_.header()->mode.store(kIdle, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool input = false;
  for (int p = 0; p < size(); ++p) {
    if (tcp_[p]) input = input || tcp_[p]->has_buffered_input();
    if (!shm_[p] || shm_[p]->failed()) continue;
    input = input || shm_[p]->has_input();
    try {
      // Every doorbell rung so far is read now, so none makes a socket look readable later
      // for data already delivered.
      if (shm_[p]->socket_owed()) shm_[p]->read_socket(true);
    } catch (const Error&) {
      // The pair keeps the error for the next wait on it; the closed socket stays readable,
      // which starts a round if the peer still counts (a departed one is not polled).
      continue;
    }
    input = input || shm_[p]->has_input();
  }
  return input || bulletin_ahead();
}

void ShmTransport::abort(const std::string& reason) noexcept {
  std::string message = reason.substr(0, kMaxAbortMessageBytes);
  for (int p = 0; p < size(); ++p) {
    if (shm_[p]) shm_[p]->abort(message);
    if (tcp_[p]) tcp_[p]->abort(message);
  }
  active_.clear();
  RF_LOG(kDebug) << "rank " << rank_ << " aborted: " << message;
}

}  // namespace rf::shm
