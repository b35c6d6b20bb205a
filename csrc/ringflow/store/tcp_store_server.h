// The store server: a thread accepting clients, one thread per client connection (a job has
// at most a few hundred ranks, each with one connection, so this stays small and simple).
// Hosted by the launcher, or by rank 0 when the job was started without one.
#pragma once

#include <atomic>
#include <condition_variable>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "ringflow/common/unique_fd.h"

namespace rf {

struct StoreServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 picks a free port
  std::string secret;
  std::string job_id;
  int64_t generation = -1;  // -1 accepts clients of any generation (launcher-hosted store)
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
  struct Connection {
    UniqueFd fd;
    std::thread thread;
    std::atomic<bool> finished{false};
  };
  void accept_loop();
  void serve(Connection* connection);
  void serve_requests(int fd);
  void reap_finished();  // joins the threads of closed connections; caller holds mutex_

  StoreServerOptions options_;
  UniqueFd listen_fd_;
  int port_ = 0;
  std::thread accept_thread_;

  std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;
  std::map<std::string, std::string> data_;
  std::list<Connection> connections_;
};

}  // namespace rf
