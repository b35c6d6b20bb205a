#include "ringflow/transport/tcp/tcp_transport.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "ringflow/common/check.h"
#include "ringflow/common/log.h"

namespace rf {

namespace {
constexpr size_t kHeaderBytes = sizeof(FrameHeader);

std::string describe_tag(uint64_t tag) {
  std::ostringstream text;
  if (tag & kPointToPointBit) {
    text << "point-to-point message #" << (tag & ~kPointToPointBit);
  } else {
    text << "collective #" << tag;
  }
  return text.str();
}
}  // namespace

TcpTransport::TcpTransport(int rank, std::vector<UniqueFd> sockets)
    : rank_(rank), peers_(sockets.size()), epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {
  RF_CHECK(epoll_fd_.valid(), kPeerFailure) << "epoll_create1: " << std::strerror(errno);
  for (size_t p = 0; p < sockets.size(); ++p) {
    peers_[p].fd = std::move(sockets[p]);
    if (!peers_[p].fd.valid()) continue;
    epoll_event event{};
    event.data.u32 = static_cast<uint32_t>(p);
    RF_CHECK(::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, peers_[p].fd.get(), &event) == 0,
             kPeerFailure)
        << "epoll_ctl: " << std::strerror(errno);
  }
}

TcpTransport::~TcpTransport() = default;

void TcpTransport::post_send(int peer, const void* data, size_t len, uint64_t tag) {
  RF_CHECK(peer >= 0 && peer < size() && peer != rank_, kInternal) << "send to rank " << peer;
  FrameHeader header{kFrameMagic, static_cast<uint32_t>(FrameKind::kData), tag, len};
  peers_[peer].sends.push_back(SendOp{header, static_cast<const char*>(data), 0});
  active_.push_back(peer);
}

void TcpTransport::post_recv(int peer, void* data, size_t len, uint64_t tag, size_t* actual_len) {
  RF_CHECK(peer >= 0 && peer < size() && peer != rank_, kInternal) << "recv from rank " << peer;
  peers_[peer].recvs.push_back(RecvOp{static_cast<char*>(data), len, tag, actual_len});
  active_.push_back(peer);
}

bool TcpTransport::progress_sends(int peer_rank) {
  Peer& peer = peers_[peer_rank];
  while (!peer.sends.empty()) {
    SendOp& op = peer.sends.front();
    const size_t total = kHeaderBytes + op.header.length;
    // Header and payload go out in one syscall: small messages cost one send, not two.
    iovec parts[2];
    int count = 0;
    if (op.sent < kHeaderBytes) {
      parts[count++] = {reinterpret_cast<char*>(&op.header) + op.sent, kHeaderBytes - op.sent};
      parts[count++] = {const_cast<char*>(op.data), op.header.length};
    } else {
      size_t done = op.sent - kHeaderBytes;
      parts[count++] = {const_cast<char*>(op.data) + done, op.header.length - done};
    }
    msghdr message{};
    message.msg_iov = parts;
    message.msg_iovlen = count;
    ssize_t sent = ::sendmsg(peer.fd.get(), &message, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      if (errno == EINTR) continue;
      RF_THROW(kPeerFailure) << "sending to rank " << peer_rank
                             << " failed: " << std::strerror(errno)
                             << " (the peer has probably died)";
    }
    op.sent += static_cast<size_t>(sent);
    if (op.sent < total) return false;
    peer.sends.pop_front();
  }
  return true;
}

void TcpTransport::accept_header(int peer_rank, Peer& peer) {
  const FrameHeader& header = peer.incoming.header;
  RF_CHECK(header.magic == kFrameMagic, kPeerFailure)
      << "received a malformed frame from rank " << peer_rank << " (bad magic 0x" << std::hex
      << header.magic << ")";
  if (header.kind == static_cast<uint32_t>(FrameKind::kAbort))
    fail_with_abort_frame(peer_rank, peer);
  RF_CHECK(header.kind == static_cast<uint32_t>(FrameKind::kData), kPeerFailure)
      << "received a frame of unknown kind " << header.kind << " from rank " << peer_rank;
  const RecvOp& op = peer.recvs.front();
  RF_CHECK(header.tag == op.tag, kPeerFailure)
      << "expected " << describe_tag(op.tag) << " from rank " << peer_rank << " but received "
      << describe_tag(header.tag) << ": the ranks called operations in different orders";
  if (op.actual_len) *op.actual_len = header.length;
  if (header.length == op.len) return;
  RF_CHECK(op.actual_len, kPeerFailure)
      << "rank " << peer_rank << " sent " << header.length << " bytes for " << describe_tag(op.tag)
      << ", " << op.len << " were agreed";
  // Point to point: drain the frame so the stream stays usable; the caller reports it.
  peer.incoming.discarding = true;
}

void TcpTransport::fail_with_abort_frame(int peer_rank, Peer& peer) {
  size_t len = std::min<uint64_t>(peer.incoming.header.length, kMaxAbortMessageBytes);
  std::string reason(len, '\0');
  // Best effort: the aborting peer wrote the whole frame before closing.
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::recv(peer.fd.get(), reason.data() + got, len - got, MSG_DONTWAIT);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  reason.resize(got);
  RF_THROW(kPeerFailure) << "rank " << peer_rank << " failed: " << reason;
}

bool TcpTransport::progress_recvs(int peer_rank) {
  Peer& peer = peers_[peer_rank];
  Incoming& in = peer.incoming;
  while (!peer.recvs.empty()) {
    RecvOp& op = peer.recvs.front();
    char* target;
    size_t want;
    char scratch[16384];
    if (in.header_got < kHeaderBytes) {
      target = reinterpret_cast<char*>(&in.header) + in.header_got;
      want = kHeaderBytes - in.header_got;
    } else if (in.discarding) {
      target = scratch;
      want = std::min<uint64_t>(sizeof(scratch), in.header.length - in.payload_got);
    } else {
      target = op.data + in.payload_got;
      want = op.len - in.payload_got;
    }
    ssize_t got = want == 0 ? 0 : ::recv(peer.fd.get(), target, want, 0);
    if (want > 0) {
      if (got == 0) {
        RF_THROW(kPeerFailure) << "the connection to rank " << peer_rank
                               << " was closed (the peer died or gave up)";
      }
      if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
        if (errno == EINTR) continue;
        RF_THROW(kPeerFailure) << "receiving from rank " << peer_rank
                               << " failed: " << std::strerror(errno);
      }
    }
    if (in.header_got < kHeaderBytes) {
      in.header_got += static_cast<size_t>(got);
      if (in.header_got == kHeaderBytes) accept_header(peer_rank, peer);
      continue;
    }
    in.payload_got += static_cast<size_t>(std::max<ssize_t>(got, 0));
    const size_t frame_len = in.discarding ? in.header.length : op.len;
    if (in.payload_got < frame_len) continue;
    in = Incoming{};
    peer.recvs.pop_front();
  }
  return true;
}

void TcpTransport::watch(int peer_rank, Peer& peer) {
  uint32_t wanted = (peer.recvs.empty() ? 0u : EPOLLIN) | (peer.sends.empty() ? 0u : EPOLLOUT);
  if (wanted == peer.epoll_events) return;
  epoll_event event{};
  event.events = wanted;
  event.data.u32 = static_cast<uint32_t>(peer_rank);
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, peer.fd.get(), &event);
  peer.epoll_events = wanted;
}

std::string TcpTransport::pending_summary() const {
  std::ostringstream text;
  const char* separator = "";
  for (int p : active_) {
    const Peer& peer = peers_[p];
    if (!peer.recvs.empty()) {
      text << separator << "receive of " << peer.recvs.front().len << " bytes from rank " << p
           << " (" << peer.incoming.payload_got << " arrived)";
      separator = ", ";
    }
    if (!peer.sends.empty()) {
      text << separator << "send of " << peer.sends.front().header.length << " bytes to rank " << p;
      separator = ", ";
    }
  }
  return text.str();
}

void TcpTransport::wait_all(const Deadline& deadline) {
  std::sort(active_.begin(), active_.end());
  active_.erase(std::unique(active_.begin(), active_.end()), active_.end());
  epoll_event events[64];
  while (true) {
    // Try every pending peer first: most small frames complete without ever sleeping.
    auto done = [this](int p) {
      bool sends_done = progress_sends(p);
      bool recvs_done = progress_recvs(p);
      if (sends_done && recvs_done) return true;
      watch(p, peers_[p]);
      return false;
    };
    active_.erase(std::remove_if(active_.begin(), active_.end(), done), active_.end());
    if (active_.empty()) break;
    int ready = ::epoll_wait(epoll_fd_.get(), events, 64, deadline.remaining_ms());
    if (ready < 0 && errno != EINTR) {
      RF_THROW(kPeerFailure) << "epoll_wait: " << std::strerror(errno);
    }
    if (ready == 0 && deadline.expired()) {
      RF_THROW(kTimeout) << "timed out waiting for " << pending_summary();
    }
  }
}

void TcpTransport::abort(const std::string& reason) noexcept {
  std::string message = reason.substr(0, kMaxAbortMessageBytes);
  for (size_t p = 0; p < peers_.size(); ++p) {
    Peer& peer = peers_[p];
    if (!peer.fd.valid()) continue;
    // An abort frame may only start at a frame boundary of our outgoing stream.
    bool mid_frame = !peer.sends.empty() && peer.sends.front().sent > 0;
    if (!mid_frame) {
      FrameHeader header{kFrameMagic, static_cast<uint32_t>(FrameKind::kAbort), 0, message.size()};
      iovec parts[2] = {{&header, sizeof(header)}, {message.data(), message.size()}};
      msghdr frame{};
      frame.msg_iov = parts;
      frame.msg_iovlen = 2;
      ::sendmsg(peer.fd.get(), &frame, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    ::shutdown(peer.fd.get(), SHUT_RDWR);
    peer.fd.reset();
    peer.sends.clear();
    peer.recvs.clear();
  }
  active_.clear();
  RF_LOG(kDebug) << "rank " << rank_ << " aborted: " << message;
}

}  // namespace rf
