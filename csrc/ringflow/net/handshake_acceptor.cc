#include "ringflow/net/handshake_acceptor.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <system_error>

#include "ringflow/common/error.h"
#include "ringflow/common/log.h"
#include "ringflow/net/socket.h"

namespace rf::net {

namespace {
// A flood of intruders must not flood the log: the first refusals are warnings, the rest debug.
constexpr size_t kLoggedRefusals = 20;
}  // namespace

HandshakeAcceptor::HandshakeAcceptor(int listen_fd, AcceptorOptions options,
                                     OnAuthenticated on_authenticated)
    : listen_fd_(listen_fd),
      options_(std::move(options)),
      on_authenticated_(std::move(on_authenticated)) {
  accept_thread_ = std::thread([this] { accept_loop(); });
}

HandshakeAcceptor::~HandshakeAcceptor() { close(); }

void HandshakeAcceptor::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    // Wakes the accept poll, and every handshake or served client blocked on its socket.
    ::shutdown(listen_fd_, SHUT_RDWR);
    for (auto& connection : connections_) {
      if (connection.fd.valid()) ::shutdown(connection.fd.get(), SHUT_RDWR);
    }
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  // Only the accept thread adds or erases connections: the list is fixed now.
  for (auto& connection : connections_) {
    if (connection.thread.joinable()) connection.thread.join();
  }
  connections_.clear();
}

void HandshakeAcceptor::accept_loop() {
  while (true) {
    pollfd entry{listen_fd_, POLLIN, 0};
    int rc = ::poll(&entry, 1, -1);
    std::unique_lock<std::mutex> lock(mutex_);
    if (stopping_) return;
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0 || (entry.revents & (POLLERR | POLLHUP | POLLNVAL))) {
      RF_LOG(kError) << options_.who << ": the listener failed; no more connections accepted";
      return;
    }
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      admit(UniqueFd(fd));
    } else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // Out of descriptors: the connection stays queued and poll() would return at once.
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

void HandshakeAcceptor::admit(UniqueFd fd) {
  reap_finished();
  std::string address = peer_address(fd.get());
  if (connections_.size() >= options_.max_connections) {
    note_refusal(address, "refused", std::to_string(connections_.size()) + " connections open");
    return;
  }
  if (pending_ >= options_.max_pending) {
    for (auto& oldest : connections_) {
      if (!oldest.pending) continue;
      ::shutdown(oldest.fd.get(), SHUT_RDWR);  // its handshake fails at once
      oldest.pending = false;
      --pending_;
      note_refusal(oldest.address, "cut off",
                   std::to_string(options_.max_pending) + " handshakes were pending");
      break;
    }
  }
  Connection* connection = &connections_.emplace_back();
  connection->fd = std::move(fd);
  connection->address = address;
  ++pending_;
  try {
    connection->thread = std::thread([this, connection] { run(connection); });
  } catch (const std::system_error& error) {
    // No thread for it (resource limits): drop this one, keep serving the others.
    --pending_;
    connections_.pop_back();
    note_refusal(address, "dropped", error.what());
  }
}

void HandshakeAcceptor::run(Connection* connection) {
  const int fd = connection->fd.get();  // only this thread moves the fd out, under mutex_
  const std::string& address = connection->address;
  // The connection leaves the pending set (and can no longer be cut off) before this side
  // sends "accepted": a peer told it was accepted is never cut off afterwards. One cut off
  // first is closed without a verdict, so the peer sees a dropped handshake and retries.
  bool claimed = false;
  bool not_now = false;  // refused by the owner's check: an authenticated peer, told to retry
  PeerCheck claim = [&](const Identity& peer, std::string* reason) {
    Verdict verdict = options_.check ? options_.check(peer, reason) : Verdict::kAccepted;
    not_now = verdict != Verdict::kAccepted;
    if (not_now) return verdict;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!connection->pending || stopping_) {
      throw Error(ErrorKind::kPeerFailure, "cut off before its verdict");
    }
    connection->pending = false;
    --pending_;
    claimed = true;
    return Verdict::kAccepted;
  };
  try {
    auto result = handshake(fd, options_.me, options_.expected_peer_role, options_.secret, claim,
                            Deadline::after_seconds(options_.handshake_seconds));
    if (not_now) {
      // Part of normal operation (a rank of the next init() tries the store or listener of
      // this one, and retries): no warning.
      RF_LOG(kInfo) << options_.who << ": refused a connection from " << address << ": "
                    << result.reason;
    } else if (result.verdict != Verdict::kAccepted) {
      note_refusal(address, "refused", result.reason);
    } else if (claimed) {
      UniqueFd owned;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!stopping_) owned = std::move(connection->fd);
      }
      if (owned.valid()) on_authenticated_(std::move(owned), result.peer, address);
    }
  } catch (const std::exception& error) {
    // Closed, truncated, silent past the deadline: only this connection is lost.
    note_refusal(address, "dropped", std::string("during its handshake: ") + error.what());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (connection->pending) {
    connection->pending = false;
    --pending_;
  }
  connection->fd.reset();  // close now, not when the thread is reaped
  connection->finished = true;
}

void HandshakeAcceptor::reap_finished() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if (!it->finished) {
      ++it;
      continue;
    }
    it->thread.join();  // it has set finished as its last step
    it = connections_.erase(it);
  }
}

void HandshakeAcceptor::note_refusal(const std::string& address, const char* verb,
                                     const std::string& why) {
  size_t count = ++refused_;
  if (count <= kLoggedRefusals) {
    RF_LOG(kWarning) << options_.who << ": " << verb << " a connection from " << address << ": "
                     << why
                     << (count == kLoggedRefusals ? " (further refusals: debug log level)" : "");
  } else {
    RF_LOG(kDebug) << options_.who << ": " << verb << " a connection from " << address << ": "
                   << why;
  }
}

}  // namespace rf::net
