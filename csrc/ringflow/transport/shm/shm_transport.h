// Transport for a job with same-host peers: a ShmPair to each peer that shares memory with this
// rank, a TcpPair to each other one, all driven from the thread that waits. A wait polls, then
// yields, then sleeps: on the futex in this rank's segment when only shared-memory peers are
// pending (the peers wake it after moving a ring), in epoll on the sockets otherwise (they ring
// a doorbell on the TCP connection instead).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/shm/collective_area.h"
#include "ringflow/transport/shm/segment.h"
#include "ringflow/transport/shm/shm_pair.h"
#include "ringflow/transport/tcp/spin_policy.h"
#include "ringflow/transport/tcp/tcp_pair.h"
#include "ringflow/transport/transport.h"

namespace rf::shm {

class ShmTransport : public Transport {
 public:
  // sockets[p]: the connection to rank p; theirs[p]: p's mapped segment, or none for a TCP peer;
  // stripes[p]: further connections to a TCP peer (RINGFLOW_TCP_STREAMS).
  ShmTransport(int rank, std::vector<UniqueFd> sockets, Segment mine, std::vector<Segment> theirs,
               SpinOptions spin, std::vector<std::vector<UniqueFd>> stripes = {});
  ~ShmTransport() override;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(theirs_.size()); }
  uint64_t post_send(int peer, const void* data, size_t len, uint64_t tag) override;
  uint64_t post_recv(int peer, void* data, size_t len, uint64_t tag, size_t* actual_len) override;
  void wait_send(int peer, uint64_t ticket, const Deadline& deadline) override;
  void wait_recv(int peer, uint64_t ticket, const Deadline& deadline) override;
  void wait_all(const Deadline& deadline) override;
  std::vector<int> peer_fds() const override;
  int peer_fd(int peer) const override;
  // Also marks this rank idle (the engine asks right before it sleeps on the sockets), so peers
  // ring its doorbell when they send; reads the doorbells already rung.
  bool has_buffered_input() const override;
  bool has_buffered_input_from(int peer) const override;
  bool input_hint() const override { return bulletin_ahead(); }
  int waiting_for() const override { return waiting_for_.load(std::memory_order_relaxed); }
  const char* peer_kind(int peer) const override;
  // Through the bulletins when every peer shares memory with this rank (bulletin.cc).
  bool oneshot_allgather(const std::vector<char>& header, const char* payload, size_t payload_bytes,
                         const std::function<size_t(const char*)>& payload_size,
                         std::vector<char>* headers, std::vector<std::vector<char>>* payloads,
                         uint64_t tag, const Deadline& deadline) override;
  void abort(const std::string& reason) noexcept override;
  CollectiveAreas* collective_areas() override { return areas_.get(); }

 private:
  void check_peer(int peer) const;
  bool idle_check();
  template <typename Finished>
  void progress_until(Finished finished, const Deadline& deadline);
  bool progress_active(bool slept);
  void sleep(const Deadline& deadline);
  std::string pending_summary() const;
  // bulletin.cc: a peer published a round this rank has not taken part in yet; and the wait
  // for every peer's block of the current round.
  bool bulletin_ahead() const;
  void wait_bulletins(std::vector<char>& got, const Deadline& deadline,
                      const std::function<void(int)>& take);

  int rank_;
  SpinPolicy spin_;
  Segment mine_;
  std::vector<Segment> theirs_;
  std::vector<std::unique_ptr<ShmPair>> shm_;  // null: not a shared-memory peer
  std::vector<std::unique_ptr<TcpPair>> tcp_;  // null: not a TCP peer
  UniqueFd epoll_fd_;
  std::vector<int> active_;
  std::atomic<int> waiting_for_{-1};
  std::unique_ptr<CollectiveAreas> areas_;  // after the pairs: it reads their connections
  bool bulletin_ = false;  // every peer shares memory: one-shot allgathers go there
  std::atomic<uint64_t> bulletin_round_{0};  // the last round this rank published
  SpinPolicy bulletin_spin_;
  int bulletin_poll_ns_ = 0;  // polled without yielding first (0: oversubscribed, or no polling)
};

}  // namespace rf::shm
