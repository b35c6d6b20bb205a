// Builds the full mesh of authenticated TCP connections between the ranks of a job, meeting
// through the store, and works out which ranks share a host.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ringflow/common/deadline.h"
#include "ringflow/store/store.h"
#include "ringflow/transport/transport.h"

namespace rf {

struct RendezvousOptions {
  int rank = 0;
  int size = 1;
  uint32_t generation = 0;  // the job's generation (job_generation.h); namespaces keys
  std::string secret;
  std::string job_id;
  std::string advertise_ip;  // where peers reach this rank (the interface that reaches the store)
  std::string host_id;       // equal for ranks on the same host
};

// Which ranks share a host. Horovod's definitions: local = same host; cross = same local rank.
struct Topology {
  int local_rank = 0;
  int local_size = 1;
  int cross_rank = 0;
  int cross_size = 1;
  // Every rank's host, numbered by the lowest rank on it; alike on every rank (the same store
  // entries). Empty in a world of one. Hierarchical allreduce groups ranks by it.
  std::vector<int> host_of;
};

struct Mesh {
  std::unique_ptr<Transport> transport;
  Topology topology;
};

// Store keys: rf/<generation>/addr/<r> = "<ip>:<port>", rf/<generation>/host/<r> = host id.
std::string rendezvous_key(uint32_t generation, const char* what, int rank);

// Rank r connects to every rank below it and accepts every rank above it, both at once. Every
// accepted connection is handshaken on its own thread (net::HandshakeAcceptor): one that fails
// (wrong secret, garbage, silence, stale generation) is refused and logged with its address
// without delaying the others; the rendezvous goes on until every real peer has arrived or the
// deadline passes. The listener is closed when connect_mesh returns.
Mesh connect_mesh(Store& store, const RendezvousOptions& options, const Deadline& deadline);

// A world of one: no store, no connections.
Mesh single_process_mesh();

}  // namespace rf
