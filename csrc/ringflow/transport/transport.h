// Ordered, reliable frames to and from every peer of a fully connected group. Collectives post
// sends and receives, then wait for all of them; the transport moves bytes in whatever order
// the sockets allow, so two ranks sending to each other never deadlock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ringflow/common/deadline.h"

namespace rf {

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Queue one frame to `peer`. `data` must stay valid until wait_all() returns.
  virtual void post_send(int peer, const void* data, size_t len, uint64_t tag) = 0;
  // Queue the receipt of the next frame from `peer` into `data`. Without `actual_len` the frame
  // must be exactly `len` bytes (a collective: sizes were agreed beforehand). With it, a frame
  // of another length is drained without touching `data` and its length reported there (point
  // to point, where only the receiver can notice a size mismatch).
  virtual void post_recv(int peer, void* data, size_t len, uint64_t tag,
                         size_t* actual_len = nullptr) = 0;
  // Drives all queued operations to completion. Throws rf::Error (kTimeout, kPeerFailure)
  // naming the peer; after a throw the transport is unusable and should be aborted.
  virtual void wait_all(const Deadline& deadline) = 0;
  // Tells every peer (best effort) why this rank gives up, and closes all connections.
  virtual void abort(const std::string& reason) noexcept = 0;
};

}  // namespace rf
