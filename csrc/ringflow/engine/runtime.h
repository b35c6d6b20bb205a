// The connections of one initialised ringflow process: the store connection (and the store
// itself on rank 0 when no launcher hosts it), the mesh of peer connections and the topology.
// Owned by the Engine, which is the only user of the transport. Rank 0 keeps a store it hosts
// open until it shuts down: heartbeats and failure reports go through it. Each init() is a new
// generation of the job, agreed through the store (job_generation.h).
#pragma once

#include <memory>
#include <string>

#include "ringflow/store/tcp_store_client.h"
#include "ringflow/store/tcp_store_server.h"
#include "ringflow/transport/rendezvous.h"

namespace rf {

struct RuntimeOptions {
  int rank = 0;
  int size = 1;
  int local_rank = -1;  // -1: work it out from host identities
  int local_size = -1;
  std::string store_host = "127.0.0.1";
  int store_port = 0;
  bool host_store = false;  // rank 0 hosts the store at store_host:store_port
  std::string secret;
  std::string job_id;
  // The rank-0-hosted store this process used in its last init() (0: none): refused, so that
  // a rank that starts over never meets the job's previous store (StoreServerOptions).
  uint32_t used_store = 0;
  double timeout_s = 300.0;
};

class Runtime {
 public:
  // Joins the job (store, mesh of connections, topology, a first barrier). Errors name the
  // rank and the store address.
  explicit Runtime(const RuntimeOptions& options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Closes every connection and the store this rank hosts. Idempotent.
  void close();

  const RuntimeOptions& options() const { return options_; }
  int rank() const { return options_.rank; }
  int size() const { return options_.size; }
  const Topology& topology() const { return topology_; }
  Transport& transport() { return *transport_; }
  // The job's generation this rank joined (0 in a world of one).
  uint32_t generation() const { return generation_; }
  // The store instance this rank used (StoreServerOptions::instance; 0: the launcher's).
  uint32_t store_instance() const { return store_instance_; }
  // How to open another connection to this job's store (the heartbeat has its own).
  StoreClientOptions store_client_options() const;

 private:
  void join();

  RuntimeOptions options_;
  std::unique_ptr<TcpStoreServer> store_server_;
  std::unique_ptr<TcpStoreClient> store_;
  std::unique_ptr<Transport> transport_;
  Topology topology_;
  uint32_t generation_ = 0;
  uint32_t store_instance_ = 0;
};

}  // namespace rf
