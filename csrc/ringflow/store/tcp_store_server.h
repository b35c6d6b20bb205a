// The store server. Connections are accepted and authenticated by a HandshakeAcceptor (each
// handshake on its own thread, with a deadline and a cap on how many may be pending); an
// authenticated client is then served on that same thread for as long as it stays connected
// (a job has at most a few hundred ranks, each with one connection, so this stays simple).
// Hosted by the launcher, or by rank 0 when the job was started without one.
#pragma once

#include <memory>
#include <set>
#include <string>

#include "ringflow/common/unique_fd.h"
#include "ringflow/net/handshake_acceptor.h"
#include "ringflow/store/store_requests.h"

namespace rf {

struct StoreServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 picks a free port
  std::string secret;
  std::string job_id;
  // Nonzero for the store rank 0 hosts during one init(): it names this store in the
  // handshake, and a client that says it used this store before (an earlier init of the same
  // job) is refused, so it waits for rank 0's next store instead. 0 (the launcher's store,
  // which outlives every init) accepts every client.
  uint32_t instance = 0;
};

class TcpStoreServer {
 public:
  explicit TcpStoreServer(StoreServerOptions options);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  int port() const { return port_; }
  void close();  // stops accepting, disconnects every client, joins every thread; idempotent

 private:
  net::AcceptorOptions acceptor_options() const;
  void serve(UniqueFd fd, const std::string& address);

  StoreServerOptions options_;
  UniqueFd listen_fd_;
  int port_ = 0;
  StoreData data_;
  std::set<int> serving_;  // sockets of authenticated clients; guarded by data_.mutex
  std::unique_ptr<net::HandshakeAcceptor> acceptor_;
};

}  // namespace rf
