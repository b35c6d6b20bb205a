#include "ringflow/transport/rendezvous.h"

#include <map>
#include <sstream>
#include <vector>

#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/common/log.h"
#include "ringflow/net/handshake.h"
#include "ringflow/net/socket.h"
#include "ringflow/transport/tcp/tcp_transport.h"

namespace rf {

namespace {

// A legitimate peer sends its hello as soon as it connects; a connection that stays silent
// longer than this is not a peer and must not hold up the rendezvous.
constexpr double kAcceptedHandshakeSeconds = 2.0;

Topology compute_topology(const std::vector<std::string>& hosts, int rank) {
  Topology topology;
  std::map<std::string, int> next_local_rank;
  std::vector<int> local_rank_of(hosts.size());
  for (size_t r = 0; r < hosts.size(); ++r) local_rank_of[r] = next_local_rank[hosts[r]]++;
  topology.local_rank = local_rank_of[rank];
  topology.local_size = next_local_rank[hosts[rank]];
  topology.cross_rank = 0;
  topology.cross_size = 0;
  for (size_t r = 0; r < hosts.size(); ++r) {
    if (local_rank_of[r] != topology.local_rank) continue;
    if (static_cast<int>(r) < rank) ++topology.cross_rank;
    ++topology.cross_size;
  }
  return topology;
}

// Polling before sleeping: RINGFLOW_SPIN_US, 50 us unless set. Polls yield the core, so
// polling is safe even with more local ranks than cores.
SpinOptions spin_options() {
  long long configured = env_config().spin_us;
  return SpinOptions{configured >= 0 ? static_cast<int>(configured) : 50};
}

UniqueFd connect_to_lower(const net::Endpoint& address, int peer, const net::Identity& me,
                          const RendezvousOptions& options, const Deadline& deadline) {
  UniqueFd fd = net::connect_tcp(address, deadline, env_config().socket_buffer_bytes);
  auto check = [peer, &options](const net::Identity& identity, std::string* reason) {
    if (identity.rank == peer && identity.generation == options.generation) {
      return net::Verdict::kAccepted;
    }
    *reason = "expected rank " + std::to_string(peer) + " at generation " +
              std::to_string(options.generation);
    return net::Verdict::kRefused;
  };
  auto result = net::handshake(fd.get(), me, net::Role::kPeer, options.secret, check, deadline);
  RF_CHECK(result.verdict == net::Verdict::kAccepted, kPeerFailure)
      << "rank " << options.rank << ": handshake with rank " << peer << " at " << address.str()
      << " failed: " << result.reason;
  return fd;
}

}  // namespace

std::string rendezvous_key(uint32_t generation, const char* what, int rank) {
  return "rf/" + std::to_string(generation) + "/" + what + "/" + std::to_string(rank);
}

Mesh connect_mesh(Store& store, const RendezvousOptions& options, const Deadline& deadline) {
  const int rank = options.rank;
  const int size = options.size;
  int port = 0;
  UniqueFd listener =
      net::listen_tcp(options.advertise_ip, 0, &port, env_config().socket_buffer_bytes);
  // The host first: once a rank's address is visible, everything about it is.
  store.set(rendezvous_key(options.generation, "host", rank), options.host_id);
  store.set(rendezvous_key(options.generation, "addr", rank),
            options.advertise_ip + ":" + std::to_string(port));

  // Only the lower ranks' addresses are needed to connect; waiting for all of them here would
  // keep this rank from accepting the higher ranks that are already knocking.
  std::vector<net::Endpoint> lower;
  for (int r = 0; r < rank; ++r) {
    lower.push_back(
        net::Endpoint::parse(store.get(rendezvous_key(options.generation, "addr", r), deadline)));
  }
  std::vector<UniqueFd> sockets(size);
  net::Identity me{net::Role::kPeer, rank, options.generation, options.job_id};
  for (int peer = 0; peer < rank; ++peer) {
    sockets[peer] = connect_to_lower(lower[peer], peer, me, options, deadline);
  }

  int missing = size - 1 - rank;
  while (missing > 0) {
    UniqueFd fd = net::accept_tcp(listener.get(), deadline);
    if (!fd.valid()) {
      std::ostringstream absent;
      for (int peer = rank + 1; peer < size; ++peer) {
        if (!sockets[peer].valid()) absent << " " << peer;
      }
      RF_THROW(kTimeout) << "rank " << rank << ": timed out waiting for ranks" << absent.str()
                         << " to connect";
    }
    auto check = [&](const net::Identity& identity, std::string* reason) {
      bool wanted = identity.rank > rank && identity.rank < size &&
                    identity.generation == options.generation && !sockets[identity.rank].valid();
      if (wanted) return net::Verdict::kAccepted;
      *reason = "unexpected peer claiming rank " + std::to_string(identity.rank) +
                " at generation " + std::to_string(identity.generation);
      return net::Verdict::kRefused;
    };
    try {
      auto handshake_deadline =
          deadline.earlier(Deadline::after_seconds(kAcceptedHandshakeSeconds));
      auto result =
          net::handshake(fd.get(), me, net::Role::kPeer, options.secret, check, handshake_deadline);
      if (result.verdict != net::Verdict::kAccepted) {
        RF_LOG(kWarning) << "rank " << rank << ": refused a connection: " << result.reason;
        continue;
      }
      sockets[result.peer.rank] = std::move(fd);
      --missing;
    } catch (const Error& error) {
      RF_LOG(kWarning) << "rank " << rank
                       << ": dropped a connection during its handshake: " << error.what();
    }
  }

  for (int peer = 0; peer < size; ++peer) {
    if (sockets[peer].valid()) net::set_nodelay(sockets[peer].get());
  }
  // Every rank published its host before its address, and every rank has connected: all
  // host ids are in the store now.
  std::vector<std::string> hosts;
  for (int r = 0; r < size; ++r) {
    hosts.push_back(store.get(rendezvous_key(options.generation, "host", r), deadline));
  }
  Mesh mesh;
  mesh.topology = compute_topology(hosts, rank);
  mesh.transport = std::make_unique<TcpTransport>(rank, std::move(sockets), spin_options());
  return mesh;
}

Mesh single_process_mesh() {
  Mesh mesh;
  std::vector<UniqueFd> none(1);
  mesh.transport = std::make_unique<TcpTransport>(0, std::move(none), SpinOptions{0});
  return mesh;
}

}  // namespace rf
