#include "ringflow/testing/frame_probe.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ringflow/common/check.h"
#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/shm/segment.h"
#include "ringflow/transport/shm/shm_pair.h"
#include "ringflow/transport/tcp/tcp_pair.h"

namespace rf::testing {

namespace {

constexpr size_t kGuardBytes = 64;
constexpr char kFill = static_cast<char>(0xA5);
// Each pass either moves bytes or ends the run, so this only trips on a parser that spins.
constexpr size_t kMaxPasses = 1 << 20;

// Writes what the socket takes without blocking; returns how many bytes went.
size_t write_some(int fd, const char* data, size_t len) {
  if (len == 0) return 0;
  ssize_t n = ::send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n > 0) return static_cast<size_t>(n);
  RF_CHECK(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR), kInternal)
      << "probe: writing the frames failed: " << std::strerror(errno);
  return 0;
}

// Posts the receives into fenced buffers, runs `feed` until the pair is done or fails, and
// checks the fences. feed(pass) moves bytes and returns whether the receives all completed.
template <typename Pair, typename Feed>
ProbeResult run_probe(Pair& pair, const std::vector<ProbeRecv>& recvs, Feed feed) {
  // Guard | payload | guard, all filled: what the pair writes shows, and so does a stray write.
  ProbeResult result;
  std::vector<std::string> fenced;
  result.actual_lens.assign(recvs.size(), SIZE_MAX);
  for (const auto& recv : recvs) fenced.emplace_back(recv.len + 2 * kGuardBytes, kFill);
  for (size_t i = 0; i < recvs.size(); ++i) {
    pair.post_recv(fenced[i].data() + kGuardBytes, recvs[i].len, recvs[i].tag,
                   recvs[i].variable_len ? &result.actual_lens[i] : nullptr);
  }
  try {
    for (size_t pass = 0; pass < kMaxPasses; ++pass) {
      if (feed()) break;
      RF_CHECK(pass + 1 < kMaxPasses, kInternal) << "probe: the frame parser does not finish";
    }
  } catch (const Error& error) {
    if (error.kind() == ErrorKind::kInternal) throw;
    result.failed = true;
    result.kind = error.kind();
    result.message = error.what();
  }
  result.completed = pair.recvs_done();
  for (size_t i = 0; i < recvs.size(); ++i) {
    const std::string& buffer = fenced[i];
    bool fenced_ok =
        std::all_of(buffer.begin(), buffer.begin() + kGuardBytes,
                    [](char c) { return c == kFill; }) &&
        std::all_of(buffer.end() - kGuardBytes, buffer.end(), [](char c) { return c == kFill; });
    RF_CHECK(fenced_ok, kInternal) << "probe: receive " << i << " wrote outside its buffer";
    result.buffers.push_back(buffer.substr(kGuardBytes, recvs[i].len));
  }
  return result;
}

}  // namespace

ProbeResult probe_frames(const std::string& bytes, const std::vector<ProbeRecv>& recvs, int peer) {
  int fds[2];
  RF_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0,
           kInternal)
      << "socketpair: " << std::strerror(errno);
  UniqueFd writer(fds[1]);
  TcpPair pair(peer, UniqueFd(fds[0]));
  size_t written = 0;
  return run_probe(pair, recvs, [&] {
    if (writer.valid()) {
      written += write_some(writer.get(), bytes.data() + written, bytes.size() - written);
      if (written == bytes.size()) writer.reset();  // the peer is done: EOF after the bytes
    }
    return pair.progress_recvs();
  });
}

ProbeResult probe_shm_frames(const std::string& bytes, const std::vector<ProbeRecv>& recvs,
                             int peer) {
  constexpr size_t kRingBytes = 4096;
  const int rank = peer + 1;
  shm::Segment mine, theirs;
  std::string why;
  RF_CHECK(shm::create_segment(rank, rank + 1, {peer}, kRingBytes, &mine, &why) &&
               shm::create_segment(peer, rank + 1, {rank}, kRingBytes, &theirs, &why),
           kInternal)
      << "probe: " << why;
  shm::unlink_segment(&mine);
  shm::unlink_segment(&theirs);
  int fds[2];
  RF_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0,
           kInternal)
      << "socketpair: " << std::strerror(errno);
  UniqueFd writer(fds[1]);
  shm::ShmPair pair(rank, peer, UniqueFd(fds[0]), mine, theirs);
  shm::RingControl* ring = mine.ring_from(peer);
  char* data = mine.ring_data(ring);
  size_t written = 0;
  return run_probe(pair, recvs, [&] {
    // Play the peer: as much of the stream as the ring has room for, then publish it.
    uint64_t head = ring->head.load(std::memory_order_relaxed);
    size_t n = std::min(bytes.size() - written,
                        kRingBytes - (head - ring->tail.load(std::memory_order_acquire)));
    for (size_t i = 0; i < n; ++i) data[(head + i) % kRingBytes] = bytes[written + i];
    ring->head.store(head + n, std::memory_order_release);
    written += n;
    if (pair.progress_recvs()) return true;
    if (written == bytes.size()) {
      writer.reset();           // the peer is gone: the connection says so
      pair.read_socket(false);  // throws: the stream ended inside a frame, or before one
    }
    return false;
  });
}

}  // namespace rf::testing
