#include "ringflow/transport/rendezvous.h"

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/common/log.h"
#include "ringflow/net/handshake.h"
#include "ringflow/net/handshake_acceptor.h"
#include "ringflow/net/socket.h"
#include "ringflow/transport/select.h"
#include "ringflow/transport/tcp/tcp_transport.h"

namespace rf {

namespace {

// A legitimate peer sends its hello as soon as it connects; a connection that stays silent
// longer than this is not a peer. Handshakes run concurrently, so this bounds only how long an
// intruder holds one of the kMaxPendingHandshakes slots, not how long it delays the rendezvous.
constexpr double kAcceptedHandshakeSeconds = 2.0;
constexpr size_t kMaxPendingHandshakes = 64;

Topology compute_topology(const std::vector<std::string>& hosts, int rank) {
  Topology topology;
  std::map<std::string, int> next_local_rank;
  std::vector<int> local_rank_of(hosts.size());
  for (size_t r = 0; r < hosts.size(); ++r) local_rank_of[r] = next_local_rank[hosts[r]]++;
  std::map<std::string, int> host_number;
  for (const std::string& host : hosts) {
    host_number.emplace(host, static_cast<int>(host_number.size()));
    topology.host_of.push_back(host_number[host]);
  }
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

// A refused handshake is final; a dropped one (the lower rank's listener cut it off in a flood
// of intruders, or timed it out on a loaded machine) is retried until the deadline.
UniqueFd connect_to_lower(const net::Endpoint& address, int peer, const net::Identity& me,
                          const RendezvousOptions& options, const Deadline& deadline) {
  auto check = [peer, &options](const net::Identity& identity, std::string* reason) {
    if (identity.rank == peer && identity.generation == options.generation) {
      return net::Verdict::kAccepted;
    }
    *reason = "expected rank " + std::to_string(peer) + " at generation " +
              std::to_string(options.generation);
    return net::Verdict::kRefused;
  };
  auto backoff = std::chrono::milliseconds(10);
  while (true) {
    UniqueFd fd = net::connect_tcp(address, deadline, env_config().socket_buffer_bytes);
    std::optional<net::HandshakeResult> result;
    try {
      result = net::handshake(fd.get(), me, net::Role::kPeer, options.secret, check, deadline);
    } catch (const Error& error) {
      // Dropped (cut off by a flood of intruders, say), not refused: retried until the deadline.
      bool retry = error.kind() == ErrorKind::kPeerFailure && !deadline.expired();
      if (!retry) {
        throw Error(error.kind(), "rank " + std::to_string(options.rank) +
                                      ": handshake with rank " + std::to_string(peer) + " at " +
                                      address.str() + " failed: " + error.what());
      }
      RF_LOG(kInfo) << "rank " << options.rank << ": handshake with rank " << peer << " at "
                    << address.str() << " dropped (" << error.what() << "), retrying";
      std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(
          backoff, std::chrono::milliseconds(deadline.remaining_ms())));
      backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
      continue;
    }
    RF_CHECK(result->verdict == net::Verdict::kAccepted, kPeerFailure)
        << "rank " << options.rank << ": handshake with rank " << peer << " at " << address.str()
        << " failed: " << result->reason;
    return fd;
  }
}

// Accepts the ranks above this one while it connects to those below: every connection's
// handshake runs concurrently (net::HandshakeAcceptor), so intruders on the data port delay
// nobody, and higher ranks need not wait for this rank to finish connecting downwards.
class HigherRanks {
 public:
  HigherRanks(int listen_fd, const net::Identity& me, const RendezvousOptions& options,
              std::vector<UniqueFd>& sockets)
      : rank_(options.rank), sockets_(sockets), missing_(options.size - 1 - options.rank) {
    net::AcceptorOptions acceptor;
    acceptor.who = "rank " + std::to_string(rank_);
    acceptor.me = me;
    acceptor.expected_peer_role = net::Role::kPeer;
    acceptor.secret = options.secret;
    acceptor.check = [this, size = options.size, generation = options.generation](
                         const net::Identity& peer, std::string* reason) {
      std::lock_guard<std::mutex> lock(mutex_);
      bool wanted = peer.rank > rank_ && peer.rank < size && peer.generation == generation &&
                    !sockets_[peer.rank].valid();
      if (wanted) return net::Verdict::kAccepted;
      *reason = "unexpected peer claiming rank " + std::to_string(peer.rank) + " at generation " +
                std::to_string(peer.generation);
      return net::Verdict::kRefused;
    };
    acceptor.handshake_seconds = kAcceptedHandshakeSeconds;
    acceptor.max_pending = kMaxPendingHandshakes;
    acceptor.max_connections = kMaxPendingHandshakes + sockets.size();
    acceptor_ = std::make_unique<net::HandshakeAcceptor>(
        listen_fd, std::move(acceptor),
        [this](UniqueFd fd, const net::Identity& peer, const std::string& address) {
          arrived(std::move(fd), peer.rank, address);
        });
  }

  // Returns once every higher rank is connected; throws kTimeout naming those that are not.
  void wait(const Deadline& deadline) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto until = Deadline::Clock::now() + std::chrono::milliseconds(deadline.remaining_ms());
      changed_.wait_until(lock, until, [this] { return missing_ == 0; });
    }
    acceptor_->close();  // joins every handshake thread: sockets_ is ours alone again
    if (missing_ == 0) return;
    std::ostringstream absent;
    for (size_t peer = rank_ + 1; peer < sockets_.size(); ++peer) {
      if (!sockets_[peer].valid()) absent << " " << peer;
    }
    RF_THROW(kTimeout) << "rank " << rank_ << ": timed out waiting for ranks" << absent.str()
                       << " to connect";
  }

 private:
  void arrived(UniqueFd fd, int peer, const std::string& address) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (sockets_[peer].valid()) {  // two connections claimed the same rank at once
      RF_LOG(kWarning) << "rank " << rank_ << ": closed a second connection from " << address
                       << " claiming rank " << peer;
      return;
    }
    sockets_[peer] = std::move(fd);
    if (--missing_ == 0) changed_.notify_all();
  }

  const int rank_;
  std::vector<UniqueFd>& sockets_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int missing_;
  std::unique_ptr<net::HandshakeAcceptor> acceptor_;  // last: its threads use the members above
};

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
  std::vector<UniqueFd> sockets(size);
  net::Identity me{net::Role::kPeer, rank, options.generation, options.job_id};
  HigherRanks higher(listener.get(), me, options, sockets);  // accepting from now on
  // The host first: once a rank's address is visible, everything about it is.
  store.set(rendezvous_key(options.generation, "host", rank), options.host_id);
  store.set(rendezvous_key(options.generation, "addr", rank),
            options.advertise_ip + ":" + std::to_string(port));

  // Only the lower ranks' addresses are needed to connect; the higher ranks are being accepted
  // meanwhile.
  for (int peer = 0; peer < rank; ++peer) {
    auto address =
        net::Endpoint::parse(store.get(rendezvous_key(options.generation, "addr", peer), deadline));
    sockets[peer] = connect_to_lower(address, peer, me, options, deadline);
  }
  higher.wait(deadline);

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
  mesh.transport = make_transport(rank, std::move(sockets), spin_options(), deadline);
  return mesh;
}

Mesh single_process_mesh() {
  Mesh mesh;
  std::vector<UniqueFd> none(1);
  mesh.transport = std::make_unique<TcpTransport>(0, std::move(none), SpinOptions{0});
  return mesh;
}

}  // namespace rf
