#include "ringflow/store/tcp_store_server.h"

#include <sys/socket.h>

#include "ringflow/common/error.h"
#include "ringflow/common/log.h"
#include "ringflow/net/socket.h"

namespace rf {

namespace {
// A client sends its hello as soon as it connects, so a few seconds is plenty even on a loaded
// machine (and a client that misses it retries); it bounds how long an intruder holds a slot.
constexpr double kHandshakeSeconds = 5.0;
// Unauthenticated connections at once; one more cuts off the oldest (HandshakeAcceptor).
constexpr size_t kMaxPendingHandshakes = 64;
// More clients than any job has ranks: beyond this, new connections are closed at once.
constexpr size_t kMaxConnections = 4096;
}  // namespace

TcpStoreServer::TcpStoreServer(StoreServerOptions options) : options_(std::move(options)) {
  listen_fd_ = net::listen_tcp(options_.host, options_.port, &port_);
  acceptor_ = std::make_unique<net::HandshakeAcceptor>(
      listen_fd_.get(), acceptor_options(),
      [this](UniqueFd fd, const net::Identity&, const std::string& address) {
        serve(std::move(fd), address);
      });
}

TcpStoreServer::~TcpStoreServer() { close(); }

net::AcceptorOptions TcpStoreServer::acceptor_options() const {
  net::AcceptorOptions acceptor;
  acceptor.who = "store";
  acceptor.me = net::Identity{net::Role::kStoreServer, -1, 0, options_.job_id};
  acceptor.me.generation = options_.instance;  // the hello's generation field names the store
  acceptor.expected_peer_role = net::Role::kStoreClient;
  acceptor.secret = options_.secret;
  const uint32_t instance = options_.instance;
  acceptor.check = [instance](const net::Identity& peer, std::string* reason) {
    if (instance != 0 && peer.generation == instance) {
      *reason =
          "the client used this store in an earlier init(); rank 0 has not started its "
          "next one yet";
      return net::Verdict::kRefused;
    }
    return net::Verdict::kAccepted;
  };
  acceptor.handshake_seconds = kHandshakeSeconds;
  acceptor.max_pending = kMaxPendingHandshakes;
  acceptor.max_connections = kMaxConnections;
  return acceptor;
}

void TcpStoreServer::close() {
  {
    std::lock_guard<std::mutex> lock(data_.mutex);
    if (data_.stopping) return;
    data_.stopping = true;
    // Wake every client thread blocked in recv(); waits see `stopping` below.
    for (int fd : serving_) ::shutdown(fd, SHUT_RDWR);
  }
  data_.changed.notify_all();
  if (acceptor_) acceptor_->close();  // joins every connection thread
  listen_fd_.reset();
}

void TcpStoreServer::serve(UniqueFd fd, const std::string& address) {
  {
    std::lock_guard<std::mutex> lock(data_.mutex);
    if (data_.stopping) return;
    serving_.insert(fd.get());
  }
  net::set_nodelay(fd.get());
  try {
    serve_store_requests(fd.get(), data_, ServeLimits{});
  } catch (const std::exception& error) {
    // A client that disconnects, sends garbage or asks for too much memory only loses its
    // own connection (and its fd leaves serving_ before it is closed).
    RF_LOG(kInfo) << "store: closed the connection of " << address << ": " << error.what();
  }
  std::lock_guard<std::mutex> lock(data_.mutex);
  serving_.erase(fd.get());
}

}  // namespace rf
