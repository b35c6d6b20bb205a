// Liveness and whereabouts through the store. Every RINGFLOW_HEARTBEAT_INTERVAL seconds a
// thread publishes "<wall-clock µs> <what this rank is doing>" under
// rf/<generation>/heartbeat/<rank>, on a store connection of its own.
//
// The sockets tell a rank that a peer died (EOF, reset) but not which rank stopped answering
// when a peer is alive but stuck (SIGSTOP, a frozen host, a deadlocked process): in a ring every
// rank times out waiting on its neighbour. When this rank fails it reads every rank's heartbeat:
// a heartbeat older than three intervals names the rank that stopped, and the others say which
// collective each rank was in. It also records the job's first failure in the store, so ranks
// that only saw the cascade (a peer's abort, a closed connection) can name where it started.
//
// The store is only ever asked with short deadlines: a store that is gone (its host died) or
// stuck costs about a second, and only on the failure path or in this thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "ringflow/store/tcp_store_client.h"

namespace rf {

struct HeartbeatOptions {
  StoreClientOptions store;  // where the store is and how to authenticate
  uint32_t generation = 0;
  int rank = 0;
  int size = 1;
  double interval_s = 1.0;
  bool rank0_hosts_store = false;  // for the message when the store does not answer
};

class Heartbeat {
 public:
  // `status` says what this rank is doing; it is called from the heartbeat thread. Connecting
  // to the store may throw (rf::Error); the caller decides whether to go on without.
  Heartbeat(HeartbeatOptions options, std::function<std::string()> status);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  void stop();  // idempotent; returns within about a second even if the store is stuck
  // After stop(): the last heartbeat says this rank shut down in order, so that a later
  // failure of the others does not call it stopped. Best effort, on the open connection only.
  void record_departure();

  // Records `failure` as the job's first failure unless a rank did so before; returns that
  // earlier failure, or nothing (this one is first, or the store cannot tell).
  std::optional<std::string> first_failure(const std::string& failure);
  // Lines naming the ranks whose heartbeat stopped and what each rank was doing, for an error
  // message; empty when the store cannot be reached.
  std::string whereabouts();

 private:
  void run();
  std::string key(int rank) const;
  // The store connection, reconnected (briefly) after an error; null if the store is out of
  // reach. A store that stalls for a while (its host was stopped) must not end the heartbeat.
  std::shared_ptr<TcpStoreClient> store();
  void drop_store(const std::shared_ptr<TcpStoreClient>& broken);
  std::string store_unreachable() const;

  HeartbeatOptions options_;  // store timeouts shortened in the constructor
  const std::function<std::string()> status_;
  std::mutex store_mutex_;  // guards store_ itself; the client serialises its requests
  std::shared_ptr<TcpStoreClient> store_;
  std::atomic<int64_t> last_beat_us_{0};  // wall clock of this rank's last stored beat
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace rf
