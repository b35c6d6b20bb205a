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
  int device = -1;         // -1: the submission's buffers are host memory
  void* stream = nullptr;  // the caller's stream (cudaStream_t; 0 = the legacy default)
  void* in = nullptr;      // device addresses
  void* out = nullptr;     // == in for in-place operations
  size_t out_bytes = 0;    // allreduce / reducescatter output size
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

// The engine's own stream on each device it has met: staging copies and device collectives run
// there, ordered against callers' streams with events.
class DeviceStreams {
 public:
  cuda::Stream& on(int device);

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<cuda::Stream>> by_device_;
};

class DeviceStaging {
 public:
  // In the caller's thread, at submission: marks the point on the caller's stream after which
  // the input is complete. `writes_in`: the result lands in the input itself (broadcast, recv).
  DeviceStaging(const DeviceTensor& tensor, size_t in_bytes, bool writes_in);
  ~DeviceStaging();
  DeviceStaging(const DeviceStaging&) = delete;
  DeviceStaging& operator=(const DeviceStaging&) = delete;

  const DeviceTensor& tensor() const { return tensor_; }
  // The engine, on the host path: copies the input to pinned host memory (after the caller's
  // pending work) and returns where it is; host_out() is where the result goes.
  void* stage_in(PinnedPool& pool, cuda::Stream& stream, const Deadline& deadline);
  void* host_in() const { return in_.buffer ? in_.buffer->data() : nullptr; }
  void* host_out() const;
  // The engine, on a device path: work queued on `stream` after this starts after the input.
  void order_after_input(void* stream) const { ready_.make_wait(stream); }
  // The engine, when the operation succeeded: the host path copies the result back; then the
  // caller's stream is made to wait for everything queued on `stream` (its result).
  void return_result(cuda::Stream& stream);

 private:
  DeviceTensor tensor_;
  size_t in_bytes_;
  bool writes_in_;
  cuda::Event ready_;  // recorded on the caller's stream at submission
  cuda::Event done_;   // recorded on the engine's stream after the result
  PinnedPool* pool_ = nullptr;
  PinnedPool::Slot in_;
  PinnedPool::Slot out_;  // empty for in-place operations
};

// Seconds per transfer of `bytes` between `device_buffer` and pinned memory, averaged over
// `iterations`: plain cudaMemcpyAsync each way, and a DeviceStaging round trip (in and back),
// for the device check's staging-rate figure.
struct StagingTimes {
  double memcpy_d2h_s = 0;
  double memcpy_h2d_s = 0;
  double staged_round_trip_s = 0;
};
StagingTimes time_staging(int device, void* device_buffer, size_t bytes, int iterations);

// The device tensor's memory ("host" or "cuda:<device>") for messages.
std::string memory_name(int device);

}  // namespace rf
