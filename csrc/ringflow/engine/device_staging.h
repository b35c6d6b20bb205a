// CUDA tensors through host memory: the path every collective takes for device buffers (and
// the one that reaches other hosts). The input is copied to a pinned host buffer on the
// caller's own stream, so it is taken after whatever the caller queued there before submitting;
// the engine waits for that copy before it reads a byte; the result is copied back on the same
// stream, so whatever the caller queues there after synchronize() sees it, with no host-side
// stream synchronisation required of the caller.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ringflow/cuda/device.h"

namespace rf {

// A device tensor as the caller hands it over (Submission::device).
struct DeviceTensor {
  int device = -1;           // -1: the submission's buffers are host memory
  void* stream = nullptr;    // the caller's stream (cudaStream_t; 0 = the legacy default)
  void* in = nullptr;        // device addresses
  void* out = nullptr;       // == in for in-place operations
  size_t out_bytes = 0;      // allreduce / reducescatter output size
  bool on_device() const { return device >= 0; }
};

// Pinned buffers and their events, reused once the last copy that touched them has finished
// (cudaHostAlloc costs milliseconds; a training step stages hundreds of tensors).
class PinnedPool {
 public:
  struct Slot {
    int device = -1;  // the events' device
    std::unique_ptr<cuda::PinnedBuffer> buffer;
    std::unique_ptr<cuda::Event> last_use;  // recorded after the last copy from / into buffer
  };
  // A slot of at least `bytes` whose last copy has finished.
  Slot take(int device, size_t bytes);
  void give_back(Slot slot);

 private:
  std::mutex mutex_;
  std::vector<Slot> free_;
};

class DeviceStaging {
 public:
  // In the caller's thread, at submission: queues the input's copy to the host on the caller's
  // stream. `writes_in`: the operation's result lands in the input itself (broadcast, recv).
  DeviceStaging(PinnedPool& pool, const DeviceTensor& tensor, size_t in_bytes, bool writes_in);
  ~DeviceStaging();
  DeviceStaging(const DeviceStaging&) = delete;
  DeviceStaging& operator=(const DeviceStaging&) = delete;

  void* host_in() const { return in_.buffer->data(); }
  void* host_out() const;
  // The engine, before it reads the input: waits until the copy to the host has finished.
  void wait_for_input();
  // The engine, when the operation succeeded: queues the result's copy back to the device on
  // the caller's stream (nothing for outputs the engine allocates: allgather, alltoall).
  void return_result();

 private:
  PinnedPool& pool_;
  DeviceTensor tensor_;
  size_t in_bytes_;
  bool writes_in_;
  bool input_ready_ = false;
  PinnedPool::Slot in_;
  PinnedPool::Slot out_;  // empty for in-place operations
};

// The device tensor's memory ("host" or "cuda:<device>") for messages.
std::string memory_name(int device);

}  // namespace rf
