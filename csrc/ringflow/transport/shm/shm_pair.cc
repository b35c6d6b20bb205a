#include "ringflow/transport/shm/shm_pair.h"

#include <linux/futex.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <sstream>

#include "ringflow/common/check.h"

namespace rf::shm {

namespace {

constexpr size_t kHeaderBytes = sizeof(FrameHeader);
// How long read_socket(settle) waits for a doorbell the peer claimed: it writes it right after
// claiming, so this only runs out when the peer was stopped or died in between.
constexpr int kSettleMs = 2000;

std::string describe_tag(uint64_t tag) {
  std::ostringstream text;
  if (tag & kPointToPointBit) {
    text << "point-to-point message #" << (tag & ~kPointToPointBit);
  } else if (tag & kChannelTagBit) {
    text << "process set " << ((tag & ~kChannelTagBit) >> 40) << " operation #"
         << (tag & ((uint64_t{1} << 40) - 1));
  } else {
    text << "collective #" << tag;
  }
  return text.str();
}

void copy_in(char* ring, size_t capacity, uint64_t position, const char* source, size_t n) {
  const size_t offset = position % capacity;
  const size_t first = std::min(n, capacity - offset);
  std::memcpy(ring + offset, source, first);
  if (n > first) std::memcpy(ring, source + first, n - first);
}

void copy_out(const char* ring, size_t capacity, uint64_t position, char* target, size_t n) {
  const size_t offset = position % capacity;
  const size_t first = std::min(n, capacity - offset);
  std::memcpy(target, ring + offset, first);
  if (n > first) std::memcpy(target + first, ring, n - first);
}

}  // namespace

void futex_wake_all(SegmentHeader* header) {
  header->wake.fetch_add(1, std::memory_order_seq_cst);
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&header->wake), FUTEX_WAKE, INT_MAX, nullptr,
            nullptr, 0);
}

void futex_wait(SegmentHeader* header, uint32_t seen, int timeout_ms) {
  timespec timeout{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&header->wake), FUTEX_WAIT, seen, &timeout,
            nullptr, 0);
}

ShmPair::ShmPair(int rank, int peer, UniqueFd fd, const Segment& mine, const Segment& theirs)
    : rank_(rank),
      peer_(peer),
      fd_(std::move(fd)),
      peer_header_(theirs.header()),
      in_(mine.ring_from(peer)),
      out_(theirs.ring_from(rank)),
      capacity_(mine.header()->ring_bytes),
      chunk_(std::max<size_t>(kHeaderBytes, capacity_ / 4)) {
  RF_CHECK(in_ && out_ && theirs.header()->ring_bytes == capacity_, kPeerFailure)
      << "shared-memory rings with rank " << peer << " are missing or differ in size";
  in_data_ = mine.ring_data(in_);
  out_data_ = theirs.ring_data(out_);
}

uint64_t ShmPair::post_send(const void* data, size_t len, uint64_t tag) {
  FrameHeader header{kFrameMagic, static_cast<uint32_t>(FrameKind::kData), tag, len};
  sends_.push_back(SendOp{header, static_cast<const char*>(data), 0});
  return sends_posted_++;
}

uint64_t ShmPair::post_recv(void* data, size_t len, uint64_t tag, size_t* actual_len) {
  recvs_.push_back(RecvOp{static_cast<char*>(data), len, tag, actual_len});
  return recvs_posted_++;
}

bool ShmPair::progress_sends() {
  bool moved = false;
  uint64_t head = out_->head.load(std::memory_order_relaxed);  // only this rank writes it
  while (!sends_.empty()) {
    const size_t space = capacity_ - (head - out_->tail.load(std::memory_order_acquire));
    if (space == 0) break;
    SendOp& op = sends_.front();
    const size_t total = kHeaderBytes + op.header.length;
    const size_t n = std::min({space, total - op.sent, chunk_});
    for (size_t done = 0; done < n;) {
      const size_t at = op.sent + done;
      const char* source = at < kHeaderBytes ? reinterpret_cast<const char*>(&op.header) + at
                                             : op.data + (at - kHeaderBytes);
      const size_t step = at < kHeaderBytes ? std::min(n - done, kHeaderBytes - at) : n - done;
      copy_in(out_data_, capacity_, head + done, source, step);
      done += step;
    }
    head += n;
    out_->head.store(head, std::memory_order_release);
    moved = true;
    op.sent += n;
    if (op.sent == total) {
      sends_.pop_front();
      ++sends_done_;
    }
  }
  if (moved) notify(true);
  return sends_.empty();
}

void ShmPair::accept_header() {
  const FrameHeader& header = incoming_.header;
  RF_CHECK(header.magic == kFrameMagic, kPeerFailure)
      << "received a malformed frame from rank " << peer_ << " (bad magic 0x" << std::hex
      << header.magic << ")";
  RF_CHECK(header.kind == static_cast<uint32_t>(FrameKind::kData), kPeerFailure)
      << "received a frame of unknown kind " << header.kind << " from rank " << peer_;
  const RecvOp& op = recvs_.front();
  RF_CHECK(header.tag == op.tag, kPeerFailure)
      << "expected " << describe_tag(op.tag) << " from rank " << peer_ << " but received "
      << describe_tag(header.tag) << ": the ranks called operations in different orders";
  if (op.actual_len) *op.actual_len = header.length;
  if (header.length == op.len) return;
  RF_CHECK(op.actual_len, kPeerFailure)
      << "rank " << peer_ << " sent " << header.length << " bytes for " << describe_tag(op.tag)
      << ", " << op.len << " were agreed";
  incoming_.discarding = true;  // point to point: drained, the caller reports the size
}

bool ShmPair::progress_recvs() {
  Incoming& in = incoming_;
  bool moved = false;
  uint64_t tail = in_->tail.load(std::memory_order_relaxed);  // only this rank writes it
  while (!recvs_.empty()) {
    RecvOp& op = recvs_.front();
    const size_t frame_len = in.discarding ? in.header.length : op.len;
    if (in.header_got == kHeaderBytes && in.payload_got == frame_len) {
      in = Incoming{};
      recvs_.pop_front();
      ++recvs_done_;
      continue;
    }
    const size_t available = in_->head.load(std::memory_order_acquire) - tail;
    if (available == 0) break;
    moved = true;
    if (in.header_got < kHeaderBytes) {
      const size_t n = std::min(available, kHeaderBytes - in.header_got);
      copy_out(in_data_, capacity_, tail, reinterpret_cast<char*>(&in.header) + in.header_got, n);
      in.header_got += n;
      tail += n;
      in_->tail.store(tail, std::memory_order_release);
      // The whole header is checked before a byte of payload goes anywhere.
      if (in.header_got == kHeaderBytes) accept_header();
      continue;
    }
    const size_t n = std::min({available, frame_len - in.payload_got, chunk_});
    if (!in.discarding) copy_out(in_data_, capacity_, tail, op.data + in.payload_got, n);
    in.payload_got += n;
    tail += n;
    in_->tail.store(tail, std::memory_order_release);
  }
  if (moved) notify(false);
  return recvs_.empty();
}

void ShmPair::notify(bool data) {
  // Pairs with the sleeper's mode store, fence, and recheck of the rings (shm_transport.cc):
  // either it sees what this rank just published, or this rank sees that it sleeps.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint32_t mode = peer_header_->mode.load(std::memory_order_relaxed);
  if (mode == kActive || (mode == kIdle && !data)) return;
  if (mode == kFutex) {
    futex_wake_all(peer_header_);
    return;
  }
  // One doorbell at a time per ring: the reader clears the flag when it reads the frame.
  std::atomic<uint32_t>& rung = data ? out_->data_rung : in_->space_rung;
  if (rung.exchange(1, std::memory_order_seq_cst) == 0) {
    ring_doorbell(data ? kDataDoorbell : kSpaceDoorbell);
  }
}

void ShmPair::ring_doorbell(uint64_t which) {
  if (!fd_.valid()) return;
  FrameHeader bell{kFrameMagic, kDoorbellKind, which, 0};
  size_t sent = 0;
  while (sent < sizeof(bell)) {
    ssize_t n = ::send(fd_.get(), reinterpret_cast<char*>(&bell) + sent, sizeof(bell) - sent,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd writable{fd_.get(), POLLOUT, 0};
      ::poll(&writable, 1, 10);  // a full socket buffer of doorbells: the peer is not reading
    } else {
      return;  // the peer is gone: its EOF reports it, here or on its side
    }
  }
}

bool ShmPair::socket_owed() const {
  return in_->data_rung.load(std::memory_order_relaxed) != 0 ||
         out_->space_rung.load(std::memory_order_relaxed) != 0;
}

bool ShmPair::has_input() const {
  return in_->head.load(std::memory_order_acquire) != in_->tail.load(std::memory_order_relaxed) ||
         incoming_.header_got > 0;
}

void ShmPair::read_socket(bool settle) {
  // The engine may read an abort frame between operations: keep what it said for the wait
  // that reports it.
  if (failure_) throw *failure_;
  try {
    drain_socket(settle);
  } catch (const Error& error) {
    failure_ = error;
    throw;
  }
}

void ShmPair::drain_socket(bool settle) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kSettleMs);
  while (fd_.valid()) {
    ssize_t got = ::recv(fd_.get(), reinterpret_cast<char*>(&socket_header_) + socket_got_,
                         sizeof(FrameHeader) - socket_got_, MSG_DONTWAIT);
    if (got > 0) {
      socket_got_ += static_cast<size_t>(got);
      if (socket_got_ == sizeof(FrameHeader)) {
        socket_got_ = 0;
        handle_socket_frame();
      }
      continue;
    }
    if (got == 0) {
      RF_THROW(kPeerFailure) << "the connection to rank " << peer_
                             << " was closed (the peer died or gave up)";
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      RF_THROW(kPeerFailure) << "receiving from rank " << peer_
                             << " failed: " << std::strerror(errno);
    }
    if (!settle || !socket_owed() || std::chrono::steady_clock::now() >= until) return;
    pollfd readable{fd_.get(), POLLIN, 0};
    ::poll(&readable, 1, 10);
  }
}

void ShmPair::handle_socket_frame() {
  const FrameHeader& header = socket_header_;
  RF_CHECK(header.magic == kFrameMagic, kPeerFailure)
      << "received a malformed frame from rank " << peer_ << " on its connection";
  if (header.kind == kDoorbellKind) {
    (header.tag == kDataDoorbell ? in_->data_rung : out_->space_rung)
        .store(0, std::memory_order_seq_cst);
    return;
  }
  RF_CHECK(header.kind == static_cast<uint32_t>(FrameKind::kAbort), kPeerFailure)
      << "received a frame of unknown kind " << header.kind << " from rank " << peer_;
  // Best effort: the aborting peer wrote the whole frame before closing.
  std::string reason(std::min<uint64_t>(header.length, kMaxAbortMessageBytes), '\0');
  size_t got = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (got < reason.size() && std::chrono::steady_clock::now() < until) {
    ssize_t n = ::recv(fd_.get(), reason.data() + got, reason.size() - got, MSG_DONTWAIT);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd readable{fd_.get(), POLLIN, 0};
      ::poll(&readable, 1, 10);
    } else {
      break;
    }
  }
  reason.resize(got);
  RF_THROW(kPeerFailure) << "rank " << peer_ << " failed: " << reason;
}

std::string ShmPair::pending_summary() const {
  std::ostringstream text;
  if (!recvs_.empty()) {
    text << "receive of " << recvs_.front().len << " bytes from rank " << peer_ << " ("
         << incoming_.payload_got << " arrived, shared memory)";
  }
  if (!sends_.empty()) {
    text << (recvs_.empty() ? "" : ", ") << "send of " << sends_.front().header.length
         << " bytes to rank " << peer_ << " (shared memory)";
  }
  return text.str();
}

void ShmPair::abort(const std::string& reason) noexcept {
  if (!fd_.valid()) return;
  // The connection carries only whole doorbell frames: an abort frame never splits one.
  FrameHeader header{kFrameMagic, static_cast<uint32_t>(FrameKind::kAbort), 0, reason.size()};
  iovec parts[2] = {{&header, sizeof(header)}, {const_cast<char*>(reason.data()), reason.size()}};
  msghdr frame{};
  frame.msg_iov = parts;
  frame.msg_iovlen = 2;
  ::sendmsg(fd_.get(), &frame, MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(fd_.get(), SHUT_RDWR);
  fd_.reset();
  futex_wake_all(peer_header_);  // a peer asleep on its futex reads the abort now
  sends_.clear();
  recvs_.clear();
}

}  // namespace rf::shm
