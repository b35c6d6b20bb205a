#include "ringflow/transport/tcp/tcp_stream.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "ringflow/common/check.h"

namespace rf {

namespace {

constexpr size_t kHeaderBytes = sizeof(FrameHeader);
constexpr size_t kStagingBytes = 64 * 1024;
constexpr int kMaxIovecs = 64;  // frames coalesced into one sendmsg

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

}  // namespace

TcpStream::TcpStream(int peer_rank, UniqueFd fd)
    : peer_(peer_rank), fd_(std::move(fd)), staged_(kStagingBytes) {}

uint64_t TcpStream::post_send(const void* data, size_t len, uint64_t tag) {
  FrameHeader header{kFrameMagic, static_cast<uint32_t>(FrameKind::kData), tag, len};
  sends_.push_back(SendOp{header, static_cast<const char*>(data), 0});
  return sends_posted_++;
}

uint64_t TcpStream::post_recv(void* data, size_t len, uint64_t tag, size_t* actual_len) {
  recvs_.push_back(RecvOp{static_cast<char*>(data), len, tag, actual_len});
  return recvs_posted_++;
}

bool TcpStream::progress_sends() {
  while (!sends_.empty()) {
    // Every queued frame, header and payload, goes out in one sendmsg where the socket takes it.
    iovec parts[kMaxIovecs];
    int count = 0;
    size_t requested = 0;
    for (auto it = sends_.begin(); it != sends_.end() && count + 2 <= kMaxIovecs; ++it) {
      if (it->sent < kHeaderBytes) {
        parts[count++] = {reinterpret_cast<char*>(&it->header) + it->sent, kHeaderBytes - it->sent};
        if (it->header.length > 0) {
          parts[count++] = {const_cast<char*>(it->data), it->header.length};
        }
      } else {
        size_t done = it->sent - kHeaderBytes;
        parts[count++] = {const_cast<char*>(it->data) + done, it->header.length - done};
      }
    }
    for (int i = 0; i < count; ++i) requested += parts[i].iov_len;
    msghdr message{};
    message.msg_iov = parts;
    message.msg_iovlen = count;
    ssize_t sent = ::sendmsg(fd_.get(), &message, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      if (errno == EINTR) continue;
      RF_THROW(kPeerFailure) << "sending to rank " << peer_ << " failed: " << std::strerror(errno)
                             << " (the peer has probably died)";
    }
    size_t left = static_cast<size_t>(sent);
    while (!sends_.empty()) {
      SendOp& op = sends_.front();
      size_t remaining = kHeaderBytes + op.header.length - op.sent;
      size_t step = std::min(left, remaining);
      op.sent += step;
      left -= step;
      if (step < remaining) break;
      sends_.pop_front();
      ++sends_done_;
    }
    if (static_cast<size_t>(sent) < requested) return false;  // the socket is full
  }
  return true;
}

size_t TcpStream::read_socket(char* target, size_t capacity) {
  while (true) {
    ssize_t got = ::recv(fd_.get(), target, capacity, 0);
    if (got > 0) return static_cast<size_t>(got);
    if (got == 0) {
      RF_THROW(kPeerFailure) << "the connection to rank " << peer_
                             << " was closed (the peer died or gave up)";
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno != EINTR) {
      RF_THROW(kPeerFailure) << "receiving from rank " << peer_
                             << " failed: " << std::strerror(errno);
    }
  }
}

size_t TcpStream::take(char* target, size_t want) {
  if (staged_begin_ == staged_end_) {
    // Large reads go straight to their destination; small ones through the staging buffer,
    // which may also pick up the frames that follow.
    if (want >= kStagingBytes / 2) return read_socket(target, want);
    staged_begin_ = 0;
    staged_end_ = read_socket(staged_.data(), kStagingBytes);
  }
  size_t n = std::min(want, staged_end_ - staged_begin_);
  if (target) std::memcpy(target, staged_.data() + staged_begin_, n);
  staged_begin_ += n;
  return n;
}

void TcpStream::accept_header() {
  const FrameHeader& header = incoming_.header;
  RF_CHECK(header.magic == kFrameMagic, kPeerFailure)
      << "received a malformed frame from rank " << peer_ << " (bad magic 0x" << std::hex
      << header.magic << ")";
  if (header.kind == static_cast<uint32_t>(FrameKind::kAbort)) fail_with_abort_frame();
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
  // Point to point: drain the frame so the stream stays usable; the caller reports it.
  incoming_.discarding = true;
}

void TcpStream::fail_with_abort_frame() {
  std::string reason(std::min<uint64_t>(incoming_.header.length, kMaxAbortMessageBytes), '\0');
  // Best effort: the aborting peer wrote the whole frame before closing.
  size_t got = 0;
  try {
    while (got < reason.size()) {
      size_t n = take(reason.data() + got, reason.size() - got);
      if (n == 0) break;
      got += n;
    }
  } catch (const Error&) {
    // The peer closed right after its abort frame; what arrived is what we report.
  }
  reason.resize(got);
  RF_THROW(kPeerFailure) << "rank " << peer_ << " failed: " << reason;
}

bool TcpStream::progress_recvs() {
  Incoming& in = incoming_;
  while (!recvs_.empty()) {
    RecvOp& op = recvs_.front();
    if (in.header_got < kHeaderBytes) {
      size_t got =
          take(reinterpret_cast<char*>(&in.header) + in.header_got, kHeaderBytes - in.header_got);
      if (got == 0) return false;
      in.header_got += got;
      if (in.header_got == kHeaderBytes) accept_header();
      continue;
    }
    const size_t frame_len = in.discarding ? in.header.length : op.len;
    if (in.payload_got < frame_len) {
      char* target = in.discarding ? nullptr : op.data + in.payload_got;
      size_t want = frame_len - in.payload_got;
      size_t got = target ? take(target, want) : take(nullptr, std::min(want, kStagingBytes / 4));
      if (got == 0) return false;
      in.payload_got += got;
      if (in.payload_got < frame_len) continue;
    }
    in = Incoming{};
    recvs_.pop_front();
    ++recvs_done_;
  }
  return true;
}

std::string TcpStream::pending_summary() const {
  std::ostringstream text;
  if (!recvs_.empty()) {
    text << "receive of " << recvs_.front().len << " bytes from rank " << peer_ << " ("
         << incoming_.payload_got << " arrived)";
  }
  if (!sends_.empty()) {
    text << (recvs_.empty() ? "" : ", ") << "send of " << sends_.front().header.length
         << " bytes to rank " << peer_;
  }
  return text.str();
}

void TcpStream::abort(const std::string& reason) noexcept {
  if (!fd_.valid()) return;
  bool mid_frame = !sends_.empty() && sends_.front().sent > 0;
  if (!mid_frame) {
    FrameHeader header{kFrameMagic, static_cast<uint32_t>(FrameKind::kAbort), 0, reason.size()};
    iovec parts[2] = {{&header, sizeof(header)}, {const_cast<char*>(reason.data()), reason.size()}};
    msghdr frame{};
    frame.msg_iov = parts;
    frame.msg_iovlen = 2;
    ::sendmsg(fd_.get(), &frame, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  ::shutdown(fd_.get(), SHUT_RDWR);
  fd_.reset();
  sends_.clear();
  recvs_.clear();
}

}  // namespace rf
