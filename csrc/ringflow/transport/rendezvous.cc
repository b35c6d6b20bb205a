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
constexpr double kAcceptedHandshakeSeconds = 5.0;

struct PeerAddress {
  net::Endpoint endpoint;
  std::string host_id;
};

PeerAddress parse_address(const std::string& value, int rank) {
  auto space = value.find(' ');
  RF_CHECK(space != std::string::npos, kPeerFailure)
      << "malformed rendezvous entry for rank " << rank << ": '" << value << "'";
  return PeerAddress{net::Endpoint::parse(value.substr(0, space)), value.substr(space + 1)};
}

Topology compute_topology(const std::vector<PeerAddress>& addresses, int rank) {
  Topology topology;
  std::map<std::string, int> next_local_rank;
  std::vector<int> local_rank_of(addresses.size());
  for (size_t r = 0; r < addresses.size(); ++r) {
    local_rank_of[r] = next_local_rank[addresses[r].host_id]++;
  }
  topology.local_rank = local_rank_of[rank];
  topology.local_size = next_local_rank[addresses[rank].host_id];
  topology.cross_rank = 0;
  topology.cross_size = 0;
  for (size_t r = 0; r < addresses.size(); ++r) {
    if (local_rank_of[r] != topology.local_rank) continue;
    if (static_cast<int>(r) < rank) ++topology.cross_rank;
    ++topology.cross_size;
  }
  return topology;
}

UniqueFd connect_to_lower(const PeerAddress& address, int peer, const net::Identity& me,
                          const RendezvousOptions& options, const Deadline& deadline) {
  UniqueFd fd = net::connect_tcp(address.endpoint, deadline, env_config().socket_buffer_bytes);
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
      << "rank " << options.rank << ": handshake with rank " << peer << " at "
      << address.endpoint.str() << " failed: " << result.reason;
  return fd;
}

}  // namespace

std::string rendezvous_key(uint32_t generation, int rank) {
  return "rf/" + std::to_string(generation) + "/rank/" + std::to_string(rank);
}

Mesh connect_mesh(Store& store, const RendezvousOptions& options, const Deadline& deadline) {
  const int rank = options.rank;
  const int size = options.size;
  int port = 0;
  UniqueFd listener =
      net::listen_tcp(options.advertise_ip, 0, &port, env_config().socket_buffer_bytes);
  store.set(rendezvous_key(options.generation, rank),
            options.advertise_ip + ":" + std::to_string(port) + " " + options.host_id);

  std::vector<std::string> keys;
  for (int r = 0; r < size; ++r) keys.push_back(rendezvous_key(options.generation, r));
  store.wait(keys, deadline);
  std::vector<PeerAddress> addresses;
  for (int r = 0; r < size; ++r)
    addresses.push_back(parse_address(store.get(keys[r], deadline), r));

  std::vector<UniqueFd> sockets(size);
  net::Identity me{net::Role::kPeer, rank, options.generation, options.job_id};
  for (int peer = 0; peer < rank; ++peer) {
    sockets[peer] = connect_to_lower(addresses[peer], peer, me, options, deadline);
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
  Mesh mesh;
  mesh.topology = compute_topology(addresses, rank);
  mesh.transport = std::make_unique<TcpTransport>(rank, std::move(sockets));
  return mesh;
}

Mesh single_process_mesh() {
  Mesh mesh;
  std::vector<UniqueFd> none(1);
  mesh.transport = std::make_unique<TcpTransport>(0, std::move(none));
  return mesh;
}

}  // namespace rf
