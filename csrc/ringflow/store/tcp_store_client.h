// A client of TcpStoreServer. Thread-safe: one request at a time on one connection.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "ringflow/common/unique_fd.h"
#include "ringflow/net/socket.h"
#include "ringflow/store/store.h"

namespace rf {

struct StoreClientOptions {
  net::Endpoint server;
  std::string secret;
  std::string job_id;
  int32_t rank = -1;  // for the server's logs
  // A rank-0-hosted store this process used in an earlier init() (0: none): that store refuses
  // the connection, and the client retries until rank 0's next store is up.
  uint32_t used_store = 0;
  double timeout_s = 300.0;  // for get()/wait() callers without a deadline of their own
  // How long one request's I/O may take, and how long past a get()/wait() deadline the reply
  // may be late. A client that must not block for long (the heartbeat, the failure path)
  // shortens both: a store host that stopped answering then costs about a second.
  double request_timeout_s = 60.0;
  double reply_slack_s = 10.0;
};

class TcpStoreClient : public Store {
 public:
  // Connects, retrying while the server is not up yet (or is the store of an earlier init),
  // until the deadline. A wrong secret or job id fails at once.
  TcpStoreClient(StoreClientOptions options, const Deadline& deadline);

  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, const Deadline& deadline) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void wait(const std::vector<std::string>& keys, const Deadline& deadline) override;
  void close();

  // The local address of the connection to the store: the interface that reaches the store,
  // which is the one ranks advertise to each other.
  std::string local_ip() const;
  double timeout_s() const { return options_.timeout_s; }
  // Which store instance answered (see StoreServerOptions::instance; 0: the launcher's).
  uint32_t server_instance() const { return server_instance_; }

 private:
  // Runs one request with the lock held. An I/O error leaves the connection mid-message, so
  // it is closed: later requests fail at once instead of reading a stale reply.
  template <typename Request>
  auto locked_request(Request request);
  void wait_locked(uint8_t command, const std::vector<std::string>& keys, const Deadline& deadline,
                   std::string* value);
  int fd() const;

  StoreClientOptions options_;
  uint32_t server_instance_ = 0;
  mutable std::mutex mutex_;
  UniqueFd fd_;
};

}  // namespace rf
