#include "ringflow/net/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "ringflow/common/check.h"

namespace rf::net {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

sockaddr_in resolve(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
  RF_CHECK(rc == 0 && found, kInvalidArgument)
      << "cannot resolve host '" << host << "': " << ::gai_strerror(rc);
  sockaddr_in addr = *reinterpret_cast<sockaddr_in*>(found->ai_addr);
  ::freeaddrinfo(found);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

UniqueFd new_socket(size_t buffer_bytes) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  RF_CHECK(fd.valid(), kPeerFailure) << "socket(): " << errno_text(errno);
  // Every ringflow protocol is request/response or pipelined frames: Nagle's algorithm would
  // hold small writes for the peer's delayed ACK (40 ms). Accepted sockets inherit this.
  set_nodelay(fd.get());
  if (buffer_bytes > 0) {
    int size = static_cast<int>(buffer_bytes);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  }
  return fd;
}

}  // namespace

Endpoint Endpoint::parse(const std::string& text) {
  auto colon = text.rfind(':');
  RF_CHECK(colon != std::string::npos && colon > 0, kInvalidArgument)
      << "'" << text << "' is not host:port";
  Endpoint endpoint;
  endpoint.host = text.substr(0, colon);
  try {
    endpoint.port = std::stoi(text.substr(colon + 1));
  } catch (const std::exception&) {
    RF_THROW(kInvalidArgument) << "'" << text << "' has no numeric port";
  }
  RF_CHECK(endpoint.port > 0 && endpoint.port < 65536, kInvalidArgument)
      << "'" << text << "' has port out of range";
  return endpoint;
}

UniqueFd listen_tcp(const std::string& host, int port, int* bound_port, size_t buffer_bytes) {
  UniqueFd fd = new_socket(buffer_bytes);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr = resolve(host, port);
  RF_CHECK(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
           kInvalidArgument)
      << "cannot listen on " << host << ":" << port << ": " << errno_text(errno);
  RF_CHECK(::listen(fd.get(), 1024) == 0, kPeerFailure) << "listen(): " << errno_text(errno);
  socklen_t len = sizeof(addr);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  if (bound_port) *bound_port = ntohs(addr.sin_port);
  return fd;
}

UniqueFd connect_tcp(const Endpoint& endpoint, const Deadline& deadline, size_t buffer_bytes) {
  sockaddr_in addr = resolve(endpoint.host, endpoint.port);
  UniqueFd fd = new_socket(buffer_bytes);
  int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  if (rc != 0 && errno != EINPROGRESS) {
    RF_THROW(kPeerFailure) << "connect to " << endpoint.str() << ": " << errno_text(errno);
  }
  if (rc != 0) {
    RF_CHECK(wait_fd(fd.get(), true, deadline), kTimeout)
        << "connect to " << endpoint.str() << " timed out";
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    RF_CHECK(err == 0, kPeerFailure) << "connect to " << endpoint.str() << ": " << errno_text(err);
  }
  return fd;
}

UniqueFd accept_tcp(int listen_fd, const Deadline& deadline) {
  while (wait_fd(listen_fd, false, deadline)) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return UniqueFd(fd);
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      RF_THROW(kPeerFailure) << "accept(): " << errno_text(errno);
    }
  }
  return UniqueFd();
}

void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL, 0);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

namespace {
int port_of(int fd, bool local) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  auto* raw = reinterpret_cast<sockaddr*>(&addr);
  int rc = local ? ::getsockname(fd, raw, &len) : ::getpeername(fd, raw, &len);
  return rc == 0 ? ntohs(addr.sin_port) : -1;
}
}  // namespace

int local_port(int fd) { return port_of(fd, true); }
int remote_port(int fd) { return port_of(fd, false); }

std::string local_ip(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  RF_CHECK(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0, kPeerFailure)
      << "getsockname(): " << errno_text(errno);
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof(text));
  return text;
}

std::string interface_ip(const std::string& name, const char* setting) {
  ifaddrs* list = nullptr;
  RF_CHECK(::getifaddrs(&list) == 0, kInvalidArgument) << "getifaddrs(): " << errno_text(errno);
  std::string found, known;
  for (ifaddrs* entry = list; entry; entry = entry->ifa_next) {
    if (!entry->ifa_addr || entry->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(entry->ifa_addr)->sin_addr, text,
                sizeof(text));
    if (name == entry->ifa_name && found.empty()) found = text;
    known += (known.empty() ? "" : ", ") + std::string(entry->ifa_name) + "=" + text;
  }
  ::freeifaddrs(list);
  RF_CHECK(!found.empty(), kInvalidArgument)
      << setting << "=" << name << ": this host has no IPv4 interface of that name (it has "
      << (known.empty() ? "none" : known) << ")";
  return found;
}

std::string peer_address(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "(unknown peer)";
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof(text));
  return std::string(text) + ":" + std::to_string(ntohs(addr.sin_port));
}

bool wait_fd(int fd, bool for_write, const Deadline& deadline) {
  pollfd entry{fd, static_cast<short>(for_write ? POLLOUT : POLLIN), 0};
  while (true) {
    int rc = ::poll(&entry, 1, deadline.remaining_ms());
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) RF_THROW(kPeerFailure) << "poll(): " << errno_text(errno);
  }
}

void send_all(int fd, const void* data, size_t len, const Deadline& deadline, const char* what) {
  const char* cursor = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t sent = ::send(fd, cursor, len, MSG_NOSIGNAL);
    if (sent > 0) {
      cursor += sent;
      len -= static_cast<size_t>(sent);
    } else if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      RF_CHECK(wait_fd(fd, true, deadline), kTimeout) << what << ": send timed out";
    } else if (sent < 0 && errno != EINTR) {
      RF_THROW(kPeerFailure) << what << ": send failed: " << errno_text(errno);
    }
  }
}

void recv_all(int fd, void* data, size_t len, const Deadline& deadline, const char* what) {
  char* cursor = static_cast<char*>(data);
  while (len > 0) {
    ssize_t got = ::recv(fd, cursor, len, 0);
    if (got > 0) {
      cursor += got;
      len -= static_cast<size_t>(got);
    } else if (got == 0) {
      RF_THROW(kPeerFailure) << what << ": connection closed by the other side";
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      RF_CHECK(wait_fd(fd, false, deadline), kTimeout) << what << ": receive timed out";
    } else if (errno != EINTR) {
      RF_THROW(kPeerFailure) << what << ": receive failed: " << errno_text(errno);
    }
  }
}

}  // namespace rf::net
