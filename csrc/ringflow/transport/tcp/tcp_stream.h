// One TCP connection to one peer: the frames queued to it and expected from it, moved with
// non-blocking syscalls. TcpPair owns one per connection (stripe) to the peer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/frame.h"

namespace rf {

class TcpStream {
 public:
  TcpStream(int peer_rank, UniqueFd fd);

  int fd() const { return fd_.get(); }
  uint64_t post_send(const void* data, size_t len, uint64_t tag);
  uint64_t post_recv(void* data, size_t len, uint64_t tag, size_t* actual_len);
  // Move as many bytes as the socket takes / has without blocking. True when nothing of that
  // direction is pending any more. Throw rf::Error (kPeerFailure) on a dead or lying peer.
  bool progress_sends();
  bool progress_recvs();

  bool sending() const { return !sends_.empty(); }
  bool receiving() const { return !recvs_.empty(); }
  // Bytes read from the socket but not yet delivered to a receive.
  bool has_buffered_input() const {
    return staged_end_ > staged_begin_ || incoming_.header_got > 0;
  }
  uint64_t sends_done() const { return sends_done_; }
  uint64_t recvs_done() const { return recvs_done_; }
  std::string pending_summary() const;
  // Best effort: tell the peer why we give up (only at a frame boundary), then close.
  void abort(const std::string& reason) noexcept;

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
  // The frame currently arriving.
  struct Incoming {
    FrameHeader header{};
    size_t header_got = 0;
    size_t payload_got = 0;
    bool discarding = false;  // a point-to-point frame of the wrong length being drained
  };

  void accept_header();
  [[noreturn]] void fail_with_abort_frame();
  // Takes up to `want` bytes for `target`: from the staging buffer if it holds any, else from
  // the socket (straight into target when it is large). Returns 0 when nothing is available.
  size_t take(char* target, size_t want);
  size_t read_socket(char* target, size_t capacity);

  int peer_;
  UniqueFd fd_;
  std::deque<SendOp> sends_;
  std::deque<RecvOp> recvs_;
  Incoming incoming_;
  // Small frames are read in bulk: one recv() often brings several headers and payloads.
  std::vector<char> staged_;
  size_t staged_begin_ = 0;
  size_t staged_end_ = 0;
  uint64_t sends_posted_ = 0;
  uint64_t sends_done_ = 0;
  uint64_t recvs_posted_ = 0;
  uint64_t recvs_done_ = 0;
};

}  // namespace rf
