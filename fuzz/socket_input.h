// The fuzz input as what a connection delivers: a socketpair whose far end has sent the bytes
// and then shut its sending side, so the reader sees them followed by end of stream. The far
// end stays open for reading, so replies written by the code under test do not fail.
#pragma once

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "ringflow/common/unique_fd.h"

namespace rf::fuzz {

// Inputs beyond this are skipped: they must fit the socket buffer in one blocking write.
constexpr size_t kMaxInputBytes = 64 * 1024;

struct SocketInput {
  UniqueFd near;  // non-blocking, what the code under test reads
  UniqueFd far;
};

inline SocketInput socket_input(const uint8_t* data, size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
  SocketInput input{UniqueFd(fds[0]), UniqueFd(fds[1])};
  int buffer = 4 * kMaxInputBytes;
  ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &buffer, sizeof(buffer));
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = ::send(fds[1], data + sent, size - sent, MSG_NOSIGNAL);
    if (n <= 0) std::abort();
    sent += static_cast<size_t>(n);
  }
  ::shutdown(fds[1], SHUT_WR);
  if (::fcntl(fds[0], F_SETFL, O_NONBLOCK) != 0) std::abort();
  return input;
}

}  // namespace rf::fuzz
