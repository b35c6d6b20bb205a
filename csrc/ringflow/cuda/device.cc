// device.h over the CUDA runtime (linked statically; it loads the driver on first use, so a
// machine without one only sees device_count() == 0).
#include "ringflow/cuda/device.h"

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "ringflow/common/check.h"

namespace rf::cuda {

namespace {

// Throws what failed and why; the CUDA error is cleared first so it does not stick to the
// next call.
void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  RF_THROW(kInternal) << "CUDA: " << what << " failed: " << cudaGetErrorName(status) << " ("
                      << cudaGetErrorString(status) << ")";
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

DeviceScope::DeviceScope(int device) {
  int current = 0;
  check(cudaGetDevice(&current), "cudaGetDevice");
  if (current != device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    previous_ = current;
  }
}

DeviceScope::~DeviceScope() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

bool built() { return true; }

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

bool available() { return device_count() > 0; }

int device_of(const void* address) {
  if (address == nullptr || !available()) return -1;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, address) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged
             ? attributes.device
             : -1;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

Stream::Stream(int device) : device_(device) {
  DeviceScope scope(device);
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  stream_ = stream;
}

Stream::~Stream() {
  if (stream_) (void)cudaStreamDestroy(as_stream(stream_));
}

void Stream::synchronize() const {
  check(cudaStreamSynchronize(as_stream(stream_)), "cudaStreamSynchronize");
}

Event::Event(int device) : device_(device) {
  DeviceScope scope(device);
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  event_ = event;
}

Event::~Event() {
  if (event_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void Event::record(void* stream) {
  DeviceScope scope(device_);
  check(cudaEventRecord(static_cast<cudaEvent_t>(event_), as_stream(stream)), "cudaEventRecord");
}

void Event::make_wait(void* stream) const {
  check(cudaStreamWaitEvent(as_stream(stream), static_cast<cudaEvent_t>(event_), 0),
        "cudaStreamWaitEvent");
}

void Event::synchronize() const {
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)), "cudaEventSynchronize");
}

void Event::wait(const Deadline& deadline) const {
  // Yield first (copies and kernels often end within microseconds), then sleep briefly: the
  // engine thread shares the cores with the ranks' own work.
  for (int polls = 0; !query(); ++polls) {
    RF_CHECK(!deadline.expired(), kTimeout)
        << "CUDA: the GPU work this rank waits for did not finish within RINGFLOW_TIMEOUT";
    if (polls < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
}

bool Event::query() const {
  cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(event_));
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  check(status, "cudaEventQuery");
  return true;
}

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  void* data = nullptr;
  // Portable: any device's copies run at full speed from it.
  check(cudaHostAlloc(&data, bytes > 0 ? bytes : 1, cudaHostAllocPortable), "cudaHostAlloc");
  data_ = static_cast<char*>(data);
}

PinnedBuffer::~PinnedBuffer() {
  if (data_) (void)cudaFreeHost(data_);
}

DeviceBuffer::DeviceBuffer(int device, size_t bytes) : bytes_(bytes), device_(device) {
  DeviceScope scope(device);
  void* data = nullptr;
  check(cudaMalloc(&data, bytes > 0 ? bytes : 1), "cudaMalloc");
  data_ = static_cast<char*>(data);
}

DeviceBuffer::~DeviceBuffer() {
  if (!data_) return;
  DeviceScope scope(device_);
  (void)cudaFree(data_);
}

void memcpy_async(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_stream(stream)), "cudaMemcpyAsync");
}

IpcHandle ipc_memory_handle(const DeviceBuffer& buffer) {
  DeviceScope scope(buffer.device());
  cudaIpcMemHandle_t handle;
  check(cudaIpcGetMemHandle(&handle, buffer.data()), "cudaIpcGetMemHandle");
  IpcHandle out{};
  static_assert(sizeof(handle) == sizeof(IpcHandle), "CUDA IPC handles are 64 bytes");
  std::memcpy(out.data(), &handle, sizeof(handle));
  return out;
}

IpcMapping::IpcMapping(int device, const IpcHandle& handle) : device_(device) {
  DeviceScope scope(device);
  cudaIpcMemHandle_t raw;
  std::memcpy(&raw, handle.data(), sizeof(raw));
  void* data = nullptr;
  check(cudaIpcOpenMemHandle(&data, raw, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
  data_ = static_cast<char*>(data);
}

IpcMapping::~IpcMapping() {
  if (!data_) return;
  DeviceScope scope(device_);
  (void)cudaIpcCloseMemHandle(data_);
}

}  // namespace rf::cuda
