#include "ringflow/engine/runtime.h"

#include <unistd.h>

#include <random>

#include "ringflow/collectives/collective.h"
#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/net/socket.h"
#include "ringflow/transport/job_generation.h"

namespace rf {

namespace {

std::string host_identity(const std::string& advertise_ip) {
  std::string configured = env_string("RINGFLOW_HOST_ID", "");
  if (!configured.empty()) return configured;
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  // Network namespaces on one machine share a hostname but not an address.
  return std::string(name) + "@" + advertise_ip;
}

}  // namespace

Runtime::Runtime(const RuntimeOptions& options) : options_(options) {
  RF_CHECK(options.size >= 1 && options.rank >= 0 && options.rank < options.size, kInvalidArgument)
      << "rank " << options.rank << " is not in a world of size " << options.size;
  RF_CHECK(options.timeout_s > 0, kInvalidArgument) << "timeout must be positive";
  (void)env_config();  // reject malformed RINGFLOW_* variables at init, not mid-job
  if (options.size == 1) {
    transport_ = single_process_mesh().transport;
    return;
  }
  try {
    join();
  } catch (const Error& error) {
    // Store and socket helpers do not know the rank; every init error should say it.
    const std::string text = error.what();
    if (text.rfind("rank ", 0) == 0) throw;
    throw Error(error.kind(), "rank " + std::to_string(options.rank) +
                                  ": init() with the store at " + options.store_host + ":" +
                                  std::to_string(options.store_port) + ": " + text);
  }
}

void Runtime::join() {
  const RuntimeOptions& options = options_;
  Deadline deadline = Deadline::after_seconds(options.timeout_s);
  if (options.host_store && options.rank == 0) {
    StoreServerOptions server;
    server.host = options.store_host;
    server.port = options.store_port;
    server.secret = options.secret;
    server.job_id = options.job_id;
    // Any nonzero number other than the last store's: it only has to differ from that one.
    std::random_device random;
    do {
      server.instance = random();
    } while (server.instance == 0 || server.instance == options.used_store);
    store_server_ = std::make_unique<TcpStoreServer>(server);
  }
  store_ = std::make_unique<TcpStoreClient>(store_client_options(), deadline);
  store_instance_ = store_->server_instance();
  generation_ = agree_generation(*store_, options.rank, options.size, deadline);

  RendezvousOptions rendezvous;
  rendezvous.rank = options.rank;
  rendezvous.size = options.size;
  rendezvous.generation = generation_;
  rendezvous.secret = options.secret;
  rendezvous.job_id = options.job_id;
  // The interface that reaches the store reaches the other ranks too, unless told otherwise.
  const std::string& interface = env_config().network_interface;
  rendezvous.advertise_ip = interface.empty()
                                ? store_->local_ip()
                                : net::interface_ip(interface, "RINGFLOW_NETWORK_INTERFACE");
  rendezvous.host_id = host_identity(rendezvous.advertise_ip);
  Mesh mesh = connect_mesh(*store_, rendezvous, deadline);
  transport_ = std::move(mesh.transport);
  topology_ = mesh.topology;
  // A launcher's own numbering wins (users pick devices by it); ours fills the gaps.
  if (options.local_rank >= 0) topology_.local_rank = options.local_rank;
  if (options.local_size >= 0) topology_.local_size = options.local_size;
  CollectiveContext ctx{*transport_, 0, deadline};
  dissemination_barrier(ctx);
}

StoreClientOptions Runtime::store_client_options() const {
  StoreClientOptions client;
  client.server = net::Endpoint{options_.store_host, options_.store_port};
  client.secret = options_.secret;
  client.job_id = options_.job_id;
  client.rank = options_.rank;
  client.used_store = options_.used_store;
  return client;
}

Runtime::~Runtime() { close(); }

void Runtime::close() {
  transport_.reset();
  if (store_) store_->close();
  if (store_server_) store_server_->close();
}

}  // namespace rf
