// Frames to and from one same-host peer through two shared-memory rings: the one in the peer's
// segment carries this rank's frames to it, the one in this rank's segment the peer's frames.
// Frames are the TCP ones (frame.h), streamed through the ring; the receiver validates the whole
// header before touching any buffer. The pair's TCP connection stays open: it tells a dead
// peer (EOF) or an abort frame, and carries doorbell frames to a rank that sleeps in epoll or
// sits in the engine between operations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "ringflow/common/error.h"
#include "ringflow/common/unique_fd.h"
#include "ringflow/transport/frame.h"
#include "ringflow/transport/shm/segment.h"

namespace rf::shm {

// Doorbell frames on the TCP connection: kind kDoorbell, tag says which ring moved.
constexpr uint32_t kDoorbellKind = 3;
constexpr uint64_t kDataDoorbell = 0;   // the sender's ring to the reader holds new data
constexpr uint64_t kSpaceDoorbell = 1;  // the sender freed space in the reader's ring to it

// The futex in a rank's segment header: bumped and woken by whoever moved one of its rings.
void futex_wake_all(SegmentHeader* header);
void futex_wait(SegmentHeader* header, uint32_t seen, int timeout_ms);

class ShmPair {
 public:
  // `mine`: this rank's segment (holds the ring from peer); `theirs`: the peer's (the ring to it).
  ShmPair(int rank, int peer, UniqueFd fd, const Segment& mine, const Segment& theirs);

  int fd() const { return fd_.get(); }
  uint64_t post_send(const void* data, size_t len, uint64_t tag);
  uint64_t post_recv(void* data, size_t len, uint64_t tag, size_t* actual_len);
  // As TcpPair: move what the rings allow; true when nothing of that direction is pending.
  bool progress_sends();
  bool progress_recvs();
  // Reads the frames waiting on the TCP connection (doorbells; an abort frame or EOF throws
  // kPeerFailure). With `settle`, also waits (bounded) for doorbells the peer has claimed but
  // not written yet, so none arrives after the caller stops looking.
  void read_socket(bool settle);
  // A doorbell is owed or the caller slept: read_socket() is worth a syscall.
  bool socket_owed() const;
  // Wakes the peer for data published outside the rings (the bulletin): a futex wake if it
  // sleeps there, a doorbell if it sleeps on the sockets or sits in the engine.
  void wake_for_data() { notify(true); }
  // Frame bytes in the incoming ring not yet delivered (the engine starts a round on them).
  bool has_input() const;

  bool failed() const { return failure_.has_value() || !fd_.valid(); }
  bool sending() const { return !sends_.empty(); }
  bool receiving() const { return !recvs_.empty(); }
  uint64_t sends_done() const { return sends_done_; }
  uint64_t recvs_done() const { return recvs_done_; }
  std::string pending_summary() const;
  void abort(const std::string& reason) noexcept;

 private:
  struct SendOp {
    FrameHeader header;
    const char* data;
    size_t sent = 0;  // bytes of header + payload already in the ring
  };
  struct RecvOp {
    char* data;
    size_t len;
    uint64_t tag;
    size_t* actual_len;
  };
  struct Incoming {
    FrameHeader header{};
    size_t header_got = 0;
    size_t payload_got = 0;
    bool discarding = false;
  };

  void accept_header();
  // Wakes the peer if it sleeps (or idles, for data) after this rank moved one of its rings.
  void notify(bool data);
  void ring_doorbell(uint64_t which);
  void drain_socket(bool settle);
  void handle_socket_frame();

  int rank_;
  int peer_;
  UniqueFd fd_;
  SegmentHeader* peer_header_;
  RingControl* in_;   // peer -> this rank, in this rank's segment
  RingControl* out_;  // this rank -> peer, in the peer's segment
  size_t capacity_;
  size_t chunk_;  // bytes published at a time, so the reader starts before the ring is full
  char* in_data_ = nullptr;
  char* out_data_ = nullptr;
  std::deque<SendOp> sends_;
  std::deque<RecvOp> recvs_;
  Incoming incoming_;
  // A frame arriving on the TCP connection.
  FrameHeader socket_header_{};
  size_t socket_got_ = 0;
  std::optional<Error> failure_;  // what the connection said, reported by every later read
  uint64_t sends_posted_ = 0;
  uint64_t sends_done_ = 0;
  uint64_t recvs_posted_ = 0;
  uint64_t recvs_done_ = 0;
};

}  // namespace rf::shm
