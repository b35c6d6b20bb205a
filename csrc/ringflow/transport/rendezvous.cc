#include "ringflow/transport/rendezvous.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
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
  // Accepts up to `streams` connections from each higher rank (RINGFLOW_TCP_STREAMS: the pair
  // uses the smaller of its two ranks' values, told by expect()).
  HigherRanks(int listen_fd, const net::Identity& me, const RendezvousOptions& options,
              std::vector<std::vector<UniqueFd>>& sockets, size_t streams)
      : rank_(options.rank), sockets_(sockets), streams_(streams) {
    net::AcceptorOptions acceptor;
    acceptor.who = "rank " + std::to_string(rank_);
    acceptor.me = me;
    acceptor.expected_peer_role = net::Role::kPeer;
    acceptor.secret = options.secret;
    acceptor.check = [this, size = options.size, generation = options.generation](
                         const net::Identity& peer, std::string* reason) {
      std::lock_guard<std::mutex> lock(mutex_);
      bool wanted = peer.rank > rank_ && peer.rank < size && peer.generation == generation &&
                    sockets_[peer.rank].size() < streams_;
      if (wanted) return net::Verdict::kAccepted;
      *reason = "unexpected peer claiming rank " + std::to_string(peer.rank) + " at generation " +
                std::to_string(peer.generation);
      return net::Verdict::kRefused;
    };
    acceptor.handshake_seconds = kAcceptedHandshakeSeconds;
    acceptor.max_pending = kMaxPendingHandshakes;
    acceptor.max_connections = kMaxPendingHandshakes + sockets.size() * streams;
    acceptor_ = std::make_unique<net::HandshakeAcceptor>(
        listen_fd, std::move(acceptor),
        [this](UniqueFd fd, const net::Identity& peer, const std::string& address) {
          arrived(std::move(fd), peer.rank, address);
        });
  }

  // Returns once every higher rank p has connected expected[p] times; throws kTimeout naming
  // those that have not.
  void wait(const std::vector<size_t>& expected, const Deadline& deadline) {
    auto complete = [&] {
      for (size_t peer = rank_ + 1; peer < sockets_.size(); ++peer) {
        if (sockets_[peer].size() < expected[peer]) return false;
      }
      return true;
    };
    bool done;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto until = Deadline::Clock::now() + std::chrono::milliseconds(deadline.remaining_ms());
      done = changed_.wait_until(lock, until, complete);
    }
    acceptor_->close();  // joins every handshake thread: sockets_ is ours alone again
    if (done) return;
    std::ostringstream absent;
    for (size_t peer = rank_ + 1; peer < sockets_.size(); ++peer) {
      if (sockets_[peer].size() < expected[peer]) absent << " " << peer;
    }
    RF_THROW(kTimeout) << "rank " << rank_ << ": timed out waiting for ranks" << absent.str()
                       << " to connect";
  }

 private:
  void arrived(UniqueFd fd, int peer, const std::string& address) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (sockets_[peer].size() >= streams_) {  // more connections claimed the rank at once
      RF_LOG(kWarning) << "rank " << rank_ << ": closed a further connection from " << address
                       << " claiming rank " << peer;
      return;
    }
    sockets_[peer].push_back(std::move(fd));
    changed_.notify_all();
  }

  const int rank_;
  std::vector<std::vector<UniqueFd>>& sockets_;
  const size_t streams_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::unique_ptr<net::HandshakeAcceptor> acceptor_;  // last: its threads use the members above
};

}  // namespace

std::string rendezvous_key(uint32_t generation, const char* what, int rank) {
  return "rf/" + std::to_string(generation) + "/" + what + "/" + std::to_string(rank);
}

Mesh connect_mesh(Store& store, const RendezvousOptions& options, const Deadline& deadline) {
  const int rank = options.rank;
  const int size = options.size;
  const size_t streams = static_cast<size_t>(env_config().tcp_streams);
  int port = 0;
  UniqueFd listener =
      net::listen_tcp(options.advertise_ip, 0, &port, env_config().socket_buffer_bytes);
  std::vector<std::vector<UniqueFd>> lanes(size);  // every connection to each peer
  net::Identity me{net::Role::kPeer, rank, options.generation, options.job_id};
  HigherRanks higher(listener.get(), me, options, lanes, streams);  // accepting from now on
  // The host first: once a rank's address is visible, everything about it is.
  store.set(rendezvous_key(options.generation, "host", rank), options.host_id);
  store.set(rendezvous_key(options.generation, "streams", rank), std::to_string(streams));
  store.set(rendezvous_key(options.generation, "addr", rank),
            options.advertise_ip + ":" + std::to_string(port));
  // A pair uses as many connections as the smaller of its ranks' RINGFLOW_TCP_STREAMS.
  auto pair_streams = [&](int peer) {
    std::string theirs = store.get(rendezvous_key(options.generation, "streams", peer), deadline);
    return std::min(streams, static_cast<size_t>(std::max(1, std::atoi(theirs.c_str()))));
  };

  // Only the lower ranks' addresses are needed to connect; the higher ranks are being accepted
  // meanwhile.
  for (int peer = 0; peer < rank; ++peer) {
    auto address =
        net::Endpoint::parse(store.get(rendezvous_key(options.generation, "addr", peer), deadline));
    const size_t count = pair_streams(peer);
    for (size_t i = 0; i < count; ++i) {
      lanes[peer].push_back(connect_to_lower(address, peer, me, options, deadline));
    }
  }
  std::vector<size_t> expected(size, 0);
  for (int peer = rank + 1; peer < size; ++peer) expected[peer] = pair_streams(peer);
  higher.wait(expected, deadline);

  std::vector<UniqueFd> sockets(size);
  std::vector<std::vector<UniqueFd>> stripes(size);
  for (int peer = 0; peer < size; ++peer) {
    if (lanes[peer].empty()) continue;
    // Both sides order a pair's connections by the connecting side's port: stripe i is the same
    // connection at both ends.
    auto connector_port = [&](const UniqueFd& fd) {
      return peer < rank ? net::local_port(fd.get()) : net::remote_port(fd.get());
    };
    std::sort(lanes[peer].begin(), lanes[peer].end(), [&](const UniqueFd& a, const UniqueFd& b) {
      return connector_port(a) < connector_port(b);
    });
    for (auto& fd : lanes[peer]) net::set_nodelay(fd.get());
    sockets[peer] = std::move(lanes[peer][0]);
    for (size_t i = 1; i < lanes[peer].size(); ++i)
      stripes[peer].push_back(std::move(lanes[peer][i]));
  }
  // Every rank published its host before its address, and every rank has connected: all
  // host ids are in the store now.
  std::vector<std::string> hosts;
  for (int r = 0; r < size; ++r) {
    hosts.push_back(store.get(rendezvous_key(options.generation, "host", r), deadline));
  }
  Mesh mesh;
  mesh.topology = compute_topology(hosts, rank);
  mesh.transport =
      make_transport(rank, std::move(sockets), spin_options(), deadline, std::move(stripes));
  return mesh;
}

Mesh single_process_mesh() {
  Mesh mesh;
  std::vector<UniqueFd> none(1);
  mesh.transport = std::make_unique<TcpTransport>(0, std::move(none), SpinOptions{0});
  return mesh;
}

}  // namespace rf
