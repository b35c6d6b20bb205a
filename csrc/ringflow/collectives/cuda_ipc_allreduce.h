// Allreduce of CUDA buffers among ranks of one host — one GPU shared by several ranks, or
// several GPUs — through CUDA IPC: each rank owns a device buffer that every other rank maps,
// so a rank reads its peers' data straight from device memory instead of through a socket.
//
// Per pass (the data goes through the buffers in passes of at most their capacity):
//   1. every rank copies its contribution into its own buffer (prescaled there);   barrier
//   2. rank r reduces slice r of every rank's buffer, in rank order, into slice r of its own
//      buffer, then finishes it (Average's division, postscale);                   barrier
//   3. every rank copies slice q of rank q's buffer to its output, for every q;    barrier
// The barriers are the host's (a dissemination barrier over the transport, after this rank's
// stream has drained), so no kernel ever waits on another process and time-slicing of one GPU
// between ranks cannot deadlock. Element i is folded as x_0 op x_1 op … op x_{N-1} whatever
// slice it lands in, so results are bitwise identical fused or not and on every rank; float16
// and bfloat16 accumulate in float32 and round once.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/cuda/device.h"

namespace rf {

class IpcPeerBuffers {
 public:
  // Collective over ctx's ranks: each allocates `capacity` bytes on `device` and all exchange
  // IPC handles. usable() comes out the same on every rank: true when every rank is on this
  // host (the same boot id) and every rank could map every other rank's buffer.
  IpcPeerBuffers(const CollectiveContext& ctx, int device, size_t capacity);
  ~IpcPeerBuffers();
  IpcPeerBuffers(const IpcPeerBuffers&) = delete;
  IpcPeerBuffers& operator=(const IpcPeerBuffers&) = delete;

  bool usable() const { return usable_; }
  size_t capacity() const { return capacity_; }
  int device() const { return device_; }
  // Rank `member`'s buffer (by rank in ctx) in this process's address space.
  char* buffer(int member) const { return buffers_[member]; }

 private:
  int device_;
  size_t capacity_;
  bool usable_ = false;
  std::unique_ptr<cuda::DeviceBuffer> mine_;
  std::vector<std::unique_ptr<cuda::IpcMapping>> mapped_;
  std::vector<char*> buffers_;
};

// One tensor of a (possibly fused) device allreduce: `count` elements read from `in`, the
// result written to `out` (may be `in`). The parts are reduced as if concatenated.
struct DevicePart {
  const void* in;
  void* out;
  size_t count;
};

// Applied on `stream` to each rank's fully reduced slice (Average, postscale).
using DeviceFinisher = std::function<void(void* data, size_t count, void* stream)>;

// Every rank passes parts of the same counts; all work is queued on `stream`, which the caller
// has ordered after the inputs' producers. Returns when the outputs are written (the stream
// has drained).
void cuda_ipc_allreduce(const CollectiveContext& ctx, const IpcPeerBuffers& peers,
                        const std::vector<DevicePart>& parts, DType dtype, ReduceOp op,
                        double prescale, const DeviceFinisher& finish, cuda::Stream& stream);

}  // namespace rf
