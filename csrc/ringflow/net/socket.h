// Thin, deadline-aware helpers over IPv4 TCP sockets. All sockets are non-blocking; the
// blocking-style helpers here wait with poll() and give up at the deadline.
#pragma once

#include <cstddef>
#include <string>

#include "ringflow/common/deadline.h"
#include "ringflow/common/unique_fd.h"

namespace rf::net {

struct Endpoint {
  std::string host;
  int port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
  static Endpoint parse(const std::string& text);  // "host:port"
};

// Listens on host:port (port 0 picks one); returns the socket and writes the bound port.
// buffer_bytes > 0 sizes the kernel buffers of accepted sockets (set before listen() so the
// TCP window scale is negotiated for them).
UniqueFd listen_tcp(const std::string& host, int port, int* bound_port, size_t buffer_bytes = 0);
// One connection attempt; throws rf::Error (kPeerFailure) if it is refused or times out.
UniqueFd connect_tcp(const Endpoint& endpoint, const Deadline& deadline, size_t buffer_bytes = 0);
// Waits for one incoming connection; returns an invalid fd when the deadline passes first.
UniqueFd accept_tcp(int listen_fd, const Deadline& deadline);

void set_nonblocking(int fd);
void set_nodelay(int fd);
std::string local_ip(int fd);      // address this socket is bound to
int local_port(int fd);            // port this socket is bound to (-1 if unknown)
int remote_port(int fd);           // port of the connected peer (-1 if unknown)
std::string peer_address(int fd);  // "ip:port" of the other end, for logs
// The IPv4 address of network interface `name` (e.g. "eth0"); throws kInvalidArgument naming
// `setting` and the interfaces that have one when it has none.
std::string interface_ip(const std::string& name, const char* setting);

// Move exactly len bytes, waiting up to the deadline. `what` names the exchange in errors.
void send_all(int fd, const void* data, size_t len, const Deadline& deadline, const char* what);
void recv_all(int fd, void* data, size_t len, const Deadline& deadline, const char* what);

// Waits until fd is readable (or writable). Returns false on timeout.
bool wait_fd(int fd, bool for_write, const Deadline& deadline);

}  // namespace rf::net
