// Transport over TCP connections to each peer (TcpPair), non-blocking sockets driven by epoll
// from the thread that waits.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/tcp/spin_policy.h"
#include "ringflow/transport/tcp/tcp_pair.h"
#include "ringflow/transport/transport.h"

namespace rf {

class TcpTransport : public Transport {
 public:
  // `sockets[p]` is the connected, authenticated socket to rank p (invalid for p == rank).
  // spin: how a wait polls the sockets before sleeping in epoll (see SpinPolicy). stripes[p]:
  // further connections to rank p (RINGFLOW_TCP_STREAMS), in the order both sides agreed.
  TcpTransport(int rank, std::vector<UniqueFd> sockets, SpinOptions spin,
               std::vector<std::vector<UniqueFd>> stripes = {});
  ~TcpTransport() override;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(pairs_.size()); }
  uint64_t post_send(int peer, const void* data, size_t len, uint64_t tag) override;
  uint64_t post_recv(int peer, void* data, size_t len, uint64_t tag, size_t* actual_len) override;
  void wait_send(int peer, uint64_t ticket, const Deadline& deadline) override;
  void wait_recv(int peer, uint64_t ticket, const Deadline& deadline) override;
  void wait_all(const Deadline& deadline) override;
  std::vector<int> peer_fds() const override;
  int peer_fd(int peer) const override;
  bool has_buffered_input() const override;
  bool has_buffered_input_from(int peer) const override;
  int waiting_for() const override { return waiting_for_.load(std::memory_order_relaxed); }
  void abort(const std::string& reason) noexcept override;

 private:
  TcpPair& pair(int peer);
  // Progresses every pair with pending work until finished() holds or the deadline passes.
  template <typename Finished>
  void progress_until(Finished finished, const Deadline& deadline);
  bool progress_active();  // one non-blocking pass; true when nothing is pending any more
  std::string pending_summary() const;

  int rank_;
  SpinPolicy spin_;
  std::vector<std::unique_ptr<TcpPair>> pairs_;  // null for this rank
  UniqueFd epoll_fd_;
  std::vector<int> active_;  // peers with pending operations
  std::atomic<int> waiting_for_{-1};
};

}  // namespace rf
