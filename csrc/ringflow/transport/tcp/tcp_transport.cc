#include "ringflow/transport/tcp/tcp_transport.h"

#include <sched.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#include "ringflow/common/check.h"
#include "ringflow/common/log.h"

namespace rf {

TcpTransport::TcpTransport(int rank, std::vector<UniqueFd> sockets, SpinOptions spin,
                           std::vector<std::vector<UniqueFd>> stripes)
    : rank_(rank), spin_(spin), pairs_(sockets.size()), epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {
  RF_CHECK(epoll_fd_.valid(), kPeerFailure) << "epoll_create1: " << std::strerror(errno);
  for (size_t p = 0; p < sockets.size(); ++p) {
    if (!sockets[p].valid()) continue;
    std::vector<UniqueFd> streams;
    streams.push_back(std::move(sockets[p]));
    if (p < stripes.size()) {
      for (auto& fd : stripes[p]) streams.push_back(std::move(fd));
    }
    pairs_[p] = std::make_unique<TcpPair>(static_cast<int>(p), std::move(streams));
    // Edge-triggered, both directions, registered once: a wait never pays an epoll_ctl. Every
    // wait tries the sockets before sleeping, so bytes that arrived before their receive was
    // posted are not lost with their edge.
    for (int fd : pairs_[p]->fds()) {
      epoll_event event{};
      event.events = EPOLLIN | EPOLLOUT | EPOLLET;
      event.data.u32 = static_cast<uint32_t>(p);
      RF_CHECK(::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &event) == 0, kPeerFailure)
          << "epoll_ctl: " << std::strerror(errno);
    }
  }
}

TcpTransport::~TcpTransport() = default;

TcpPair& TcpTransport::pair(int peer) {
  RF_CHECK(peer >= 0 && peer < size() && pairs_[peer], kInternal)
      << "rank " << rank_ << " has no connection to rank " << peer;
  return *pairs_[peer];
}

uint64_t TcpTransport::post_send(int peer, const void* data, size_t len, uint64_t tag) {
  uint64_t ticket = pair(peer).post_send(data, len, tag);
  active_.push_back(peer);
  return ticket;
}

uint64_t TcpTransport::post_recv(int peer, void* data, size_t len, uint64_t tag,
                                 size_t* actual_len) {
  uint64_t ticket = pair(peer).post_recv(data, len, tag, actual_len);
  active_.push_back(peer);
  return ticket;
}

bool TcpTransport::progress_active() {
  std::sort(active_.begin(), active_.end());
  active_.erase(std::unique(active_.begin(), active_.end()), active_.end());
  auto idle = [this](int peer) {
    TcpPair& p = *pairs_[peer];
    try {
      bool sends_idle = p.progress_sends();
      bool recvs_idle = p.progress_recvs();
      return sends_idle && recvs_idle;
    } catch (const Error&) {
      waiting_for_.store(peer, std::memory_order_relaxed);  // the peer this wait ended on
      throw;
    }
  };
  active_.erase(std::remove_if(active_.begin(), active_.end(), idle), active_.end());
  return active_.empty();
}

template <typename Finished>
void TcpTransport::progress_until(Finished finished, const Deadline& deadline) {
  using Clock = std::chrono::steady_clock;
  epoll_event events[64];
  const auto start = Clock::now();
  auto done = [&] {
    if (!finished()) return false;
    waiting_for_.store(-1, std::memory_order_relaxed);
    spin_.waited(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
    return true;
  };
  while (true) {
    progress_active();
    if (done()) return;
    if (spin_.budget_us() > 0) {
      auto until = Clock::now() + std::chrono::microseconds(spin_.budget_us());
      while (Clock::now() < until) {
        // Costs ~0.3 us when this core has nothing else to run; when the peer shares the core
        // (oversubscribed, or placed here by the scheduler) it lets the peer send.
        ::sched_yield();
        progress_active();
        if (done()) return;
      }
    }
    // active_ is sorted: name the lowest peer that still owes this rank a frame, else a send.
    waiting_for_.store(active_.empty() ? -1 : active_.front(), std::memory_order_relaxed);
    for (int peer : active_) {
      if (pairs_[peer]->receiving()) {
        waiting_for_.store(peer, std::memory_order_relaxed);
        break;
      }
    }
    RF_CHECK(!deadline.expired(), kTimeout) << "timed out waiting for " << pending_summary();
    int ready = ::epoll_wait(epoll_fd_.get(), events, 64, deadline.remaining_ms());
    if (ready < 0 && errno != EINTR) {
      RF_THROW(kPeerFailure) << "epoll_wait: " << std::strerror(errno);
    }
  }
}

void TcpTransport::wait_send(int peer, uint64_t ticket, const Deadline& deadline) {
  const TcpPair& target = pair(peer);
  progress_until([&] { return target.sends_done() > ticket; }, deadline);
}

void TcpTransport::wait_recv(int peer, uint64_t ticket, const Deadline& deadline) {
  const TcpPair& target = pair(peer);
  progress_until([&] { return target.recvs_done() > ticket; }, deadline);
}

void TcpTransport::wait_all(const Deadline& deadline) {
  progress_until([this] { return active_.empty(); }, deadline);
}

std::string TcpTransport::pending_summary() const {
  std::ostringstream text;
  for (size_t i = 0; i < active_.size(); ++i) {
    text << (i ? ", " : "") << pairs_[active_[i]]->pending_summary();
  }
  return text.str();
}

std::vector<int> TcpTransport::peer_fds() const {
  std::vector<int> fds;
  for (const auto& p : pairs_) {
    if (p && p->fd() >= 0) fds.push_back(p->fd());
  }
  return fds;
}

int TcpTransport::peer_fd(int peer) const {
  if (peer < 0 || peer >= size() || !pairs_[peer]) return -1;
  return pairs_[peer]->fd();
}

bool TcpTransport::has_buffered_input() const {
  for (const auto& p : pairs_) {
    if (p && p->has_buffered_input()) return true;
  }
  return false;
}

bool TcpTransport::has_buffered_input_from(int peer) const {
  return peer >= 0 && peer < size() && pairs_[peer] && pairs_[peer]->has_buffered_input();
}

void TcpTransport::abort(const std::string& reason) noexcept {
  std::string message = reason.substr(0, kMaxAbortMessageBytes);
  for (auto& p : pairs_) {
    if (p) p->abort(message);
  }
  active_.clear();
  RF_LOG(kDebug) << "rank " << rank_ << " aborted: " << message;
}

}  // namespace rf
