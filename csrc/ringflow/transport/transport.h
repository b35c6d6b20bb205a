// Ordered, reliable frames to and from every peer of a fully connected group. Collectives post
// sends and receives, then wait for all of them; the transport moves bytes in whatever order
// the sockets allow, so two ranks sending to each other never deadlock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ringflow/common/deadline.h"

namespace rf {

namespace shm {
class CollectiveAreas;
}

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Queue one frame to `peer`. `data` must stay valid, and unchanged, until the send completes
  // (wait_send() with the returned ticket, or wait_all()). Sends to one peer complete in order.
  virtual uint64_t post_send(int peer, const void* data, size_t len, uint64_t tag) = 0;
  virtual void wait_send(int peer, uint64_t ticket, const Deadline& deadline) = 0;
  // Queue the receipt of the next frame from `peer` into `data`. Without `actual_len` the frame
  // must be exactly `len` bytes (a collective: sizes were agreed beforehand). With it, a frame
  // of another length is drained without touching `data` and its length reported there (point
  // to point, where only the receiver can notice a size mismatch). Returns a ticket for
  // wait_recv(); receives from one peer complete in the order they were posted.
  virtual uint64_t post_recv(int peer, void* data, size_t len, uint64_t tag,
                             size_t* actual_len = nullptr) = 0;
  // Drives all queued operations until the receive with this ticket has completed: the
  // pipelined algorithms reduce segment k while later segments are still arriving.
  virtual void wait_recv(int peer, uint64_t ticket, const Deadline& deadline) = 0;
  // Drives all queued operations to completion. Both waits throw rf::Error (kTimeout,
  // kPeerFailure) naming the peer; after a throw the transport is unusable and should be aborted.
  virtual void wait_all(const Deadline& deadline) = 0;
  // For a thread that waits for peers to start talking (the engine between operations): the
  // sockets to poll for readability, and whether bytes already read sit in a staging buffer.
  virtual std::vector<int> peer_fds() const = 0;
  // The socket to one peer (-1: none to poll): the engine stops polling a peer that left.
  virtual int peer_fd(int peer) const {
    (void)peer;
    return -1;
  }
  virtual bool has_buffered_input() const = 0;
  // Whether bytes from `peer` already sit in a staging buffer (call has_buffered_input() first:
  // it may read them in). The engine tells a process set's own traffic from the job's by it.
  virtual bool has_buffered_input_from(int peer) const {
    (void)peer;
    return has_buffered_input();
  }
  // Lock-free, from any thread: a peer began something this rank has not taken part in yet,
  // in memory no socket reports (a bulletin round). A caller waiting for peers polls it.
  virtual bool input_hint() const { return false; }
  // The job rank this rank last went to sleep waiting for (its first pending operation), or -1
  // after a wait completed. Stays set when a wait throws. Safe to read from any thread: the
  // heartbeat and the flight recorder report it.
  virtual int waiting_for() const { return -1; }
  // How frames to `peer` travel: "tcp", "shm", or "self" for this rank.
  virtual const char* peer_kind(int peer) const { return peer == rank() ? "self" : "tcp"; }
  // Same-host peers' collective areas (transport/shm/collective_area.h), in job ranks; null
  // when this transport has none. job_rank() maps this transport's peer numbers to those.
  virtual shm::CollectiveAreas* collective_areas() { return nullptr; }
  virtual int job_rank(int peer) const { return peer; }
  // Every rank's block (a header of the same size on every rank, then payload_size(header)
  // bytes) gathered in one step through memory all ranks map, instead of frames: each rank
  // publishes its own and reads the others' (shm/bulletin.h). False where this transport cannot
  // (a peer on another host), which is the same answer on every rank: gather by frames then.
  virtual bool oneshot_allgather(const std::vector<char>& header, const char* payload,
                                 size_t payload_bytes,
                                 const std::function<size_t(const char*)>& payload_size,
                                 std::vector<char>* headers,
                                 std::vector<std::vector<char>>* payloads, uint64_t tag,
                                 const Deadline& deadline) {
    (void)header, (void)payload, (void)payload_bytes, (void)payload_size, (void)headers;
    (void)payloads, (void)tag, (void)deadline;
    return false;
  }
  // Tells every peer (best effort) why this rank gives up, and closes all connections.
  virtual void abort(const std::string& reason) noexcept = 0;
};

}  // namespace rf
