// Everything between this rank and one TCP peer: one or more connections (stripes,
// RINGFLOW_TCP_STREAMS). A large collective frame is cut into one part per stripe, each part a
// whole frame of its own (same tag, its own length) on its own connection, so every connection
// keeps the frame checks of tcp_stream.h. Both sides cut the same way — the tag and the agreed
// length decide — and frames complete in the order they were posted. Small frames and
// point-to-point messages (whose length the receiver may not know) use the first connection,
// the one the engine watches for the next round.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/tcp/tcp_stream.h"

namespace rf {

class TcpPair {
 public:
  // A frame is striped over as many connections as give each part at least this many bytes.
  static constexpr size_t kMinPartBytes = 256 << 10;

  // streams[0] is the first connection; any others carry stripes. None may be invalid.
  TcpPair(int peer_rank, std::vector<UniqueFd> streams);
  TcpPair(int peer_rank, UniqueFd fd);

  int fd() const { return streams_[0]->fd(); }
  std::vector<int> fds() const;
  uint64_t post_send(const void* data, size_t len, uint64_t tag);
  uint64_t post_recv(void* data, size_t len, uint64_t tag, size_t* actual_len);
  // As TcpStream: true when nothing of that direction is pending on any connection.
  bool progress_sends();
  bool progress_recvs();

  bool sending() const { return !sends_.empty(); }
  bool receiving() const { return !recvs_.empty(); }
  bool has_buffered_input() const;
  uint64_t sends_done() const { return sends_done_; }
  uint64_t recvs_done() const { return recvs_done_; }
  std::string pending_summary() const;
  void abort(const std::string& reason) noexcept;

 private:
  // One posted frame: the ticket each connection gave its part (kNone: no part there).
  struct Frame {
    std::vector<uint64_t> tickets;
  };
  static constexpr uint64_t kNone = ~uint64_t{0};

  size_t parts(size_t len, uint64_t tag) const;
  template <typename Post>
  Frame post(size_t len, uint64_t tag, Post post_part);
  // Retires the finished frames at the front of `frames`; returns how many.
  template <typename Done>
  static uint64_t retire(std::deque<Frame>& frames, Done done);

  std::vector<std::unique_ptr<TcpStream>> streams_;
  std::deque<Frame> sends_;
  std::deque<Frame> recvs_;
  uint64_t sends_posted_ = 0;
  uint64_t sends_done_ = 0;
  uint64_t recvs_posted_ = 0;
  uint64_t recvs_done_ = 0;
};

}  // namespace rf
