// Accepts connections on a listening socket and runs each one's handshake on its own
// short-lived thread, so that a silent, slow or garbage-sending intruder holds up nobody but
// itself. At most `max_pending` handshakes run at once: one more cuts off the oldest pending
// handshake (its socket is shut down, so it fails at once). A flood thus only displaces other
// intruders, or now and then a real peer, which retries. Refusals are logged with the peer's
// address. Used by the store server and by each rank's data listener during rendezvous.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>

#include "ringflow/common/unique_fd.h"
#include "ringflow/net/handshake.h"

namespace rf::net {

struct AcceptorOptions {
  std::string who;  // log prefix: "store", "rank 3"
  Identity me;
  Role expected_peer_role = Role::kPeer;
  std::string secret;
  PeerCheck check;  // runs on the handshake threads: must be thread-safe
  double handshake_seconds = 2.0;
  size_t max_pending = 64;        // unauthenticated connections at once
  size_t max_connections = 4096;  // pending + authenticated; beyond it new ones are closed
};

// Runs on the connection's thread once its handshake succeeded, and owns the socket from then
// on. It may keep the thread (the store serves its client there) but must return once the
// owner stops; the acceptor's close() joins it.
using OnAuthenticated =
    std::function<void(UniqueFd fd, const Identity& peer, const std::string& address)>;

class HandshakeAcceptor {
 public:
  HandshakeAcceptor(int listen_fd, AcceptorOptions options, OnAuthenticated on_authenticated);
  ~HandshakeAcceptor();
  HandshakeAcceptor(const HandshakeAcceptor&) = delete;
  HandshakeAcceptor& operator=(const HandshakeAcceptor&) = delete;

  // Stops accepting (shuts the listener down), cuts off every pending handshake and joins
  // every thread, including those still inside on_authenticated. Idempotent.
  void close();
  size_t refused() const { return refused_; }

 private:
  struct Connection {
    UniqueFd fd;  // moved out when authenticated
    std::string address;
    std::thread thread;
    bool pending = true;  // counts against max_pending; guarded by mutex_
    std::atomic<bool> finished{false};
  };
  void accept_loop();
  void admit(UniqueFd fd);  // caller holds mutex_
  void run(Connection* connection);
  void reap_finished();  // caller holds mutex_
  void note_refusal(const std::string& address, const char* verb, const std::string& why);

  int listen_fd_;
  AcceptorOptions options_;
  OnAuthenticated on_authenticated_;
  std::mutex mutex_;
  bool stopping_ = false;
  size_t pending_ = 0;
  std::list<Connection> connections_;  // in accept order: the front is the oldest
  std::atomic<size_t> refused_{0};
  std::thread accept_thread_;
};

}  // namespace rf::net
