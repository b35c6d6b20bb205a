// Transport over one TCP connection per peer, non-blocking sockets driven by epoll from the
// thread that calls wait_all().
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/frame.h"
#include "ringflow/transport/transport.h"

namespace rf {

class TcpTransport : public Transport {
 public:
  // `sockets[p]` is the connected, authenticated socket to rank p (invalid for p == rank).
  TcpTransport(int rank, std::vector<UniqueFd> sockets);
  ~TcpTransport() override;

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(peers_.size()); }
  void post_send(int peer, const void* data, size_t len, uint64_t tag) override;
  void post_recv(int peer, void* data, size_t len, uint64_t tag, size_t* actual_len) override;
  void wait_all(const Deadline& deadline) override;
  void abort(const std::string& reason) noexcept override;

 private:
  struct SendOp {
    FrameHeader header;
    const char* data;
    size_t sent = 0;  // bytes of header + payload already written
  };
  struct RecvOp {
    char* data;
    size_t len;
    uint64_t tag;
    size_t* actual_len;  // null: the frame must be exactly len bytes
  };
  // The frame currently arriving from a peer.
  struct Incoming {
    FrameHeader header{};
    size_t header_got = 0;
    size_t payload_got = 0;
    bool discarding = false;  // a point-to-point frame of the wrong length being drained
  };
  struct Peer {
    UniqueFd fd;
    std::deque<SendOp> sends;
    std::deque<RecvOp> recvs;
    Incoming incoming;
    uint32_t epoll_events = 0;  // what epoll currently watches for
  };

  bool progress_sends(int peer_rank);  // true when this peer has no pending sends
  bool progress_recvs(int peer_rank);  // true when this peer has no pending receives
  void accept_header(int peer_rank, Peer& peer);
  [[noreturn]] void fail_with_abort_frame(int peer_rank, Peer& peer);
  void watch(int peer_rank, Peer& peer);
  std::string pending_summary() const;

  int rank_;
  std::vector<Peer> peers_;
  UniqueFd epoll_fd_;
  std::vector<int> active_;  // peers with pending operations
};

}  // namespace rf
