// The CUDA runtime as the rest of the core sees it: queries that never throw, and small RAII
// owners of streams, events and memory. No CUDA header is included here — handles travel as
// void* — so the engine compiles the same with or without CUDA. Built from device.cc when nvcc
// is found, from device_stub.cc otherwise (queries answer "no", everything else throws).
#pragma once

#include <array>
#include <cstddef>
#include <string>

#include "ringflow/common/deadline.h"

namespace rf::cuda {

// Compiled with CUDA.
bool built();
// GPUs this process can use; 0 without a driver or a device (never throws).
int device_count();
// built() && device_count() > 0.
bool available();
// The device an address belongs to, or -1 for host memory (pageable or pinned) — also -1 for
// anything when CUDA is unavailable.
int device_of(const void* address);

void set_device(int device);

// Makes `device` current in this thread until the scope ends (the caller's own choice of device
// is restored: the engine works on the caller's thread as well as its own).
class DeviceScope {
 public:
  explicit DeviceScope(int device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

// A non-blocking stream on one device.
class Stream {
 public:
  explicit Stream(int device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* handle() const { return stream_; }
  int device() const { return device_; }
  void synchronize() const;

 private:
  void* stream_ = nullptr;
  int device_ = 0;
};

// An event with timing disabled.
class Event {
 public:
  explicit Event(int device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(void* stream);
  // Work queued on `stream` after this call waits for the event's last record.
  void make_wait(void* stream) const;
  void synchronize() const;
  // As synchronize(), but throws rf::Error (kTimeout) at the deadline: the work ringflow waits
  // for may sit behind whatever the caller queued on its stream.
  void wait(const Deadline& deadline) const;
  bool query() const;  // finished (or never recorded)
  void* handle() const { return event_; }

 private:
  void* event_ = nullptr;
  int device_ = 0;
};

// Page-locked host memory (cudaHostAlloc): the staging area between a device and the network.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  char* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  char* data_ = nullptr;
  size_t bytes_ = 0;
};

// Device memory owned by the library (cudaMalloc).
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  char* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }

 private:
  char* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

// Any direction (cudaMemcpyDefault: unified addressing tells host from device).
void memcpy_async(void* dst, const void* src, size_t bytes, void* stream);

// CUDA IPC: a device allocation named by 64 opaque bytes that another process on the same host
// opens.
using IpcHandle = std::array<char, 64>;
IpcHandle ipc_memory_handle(const DeviceBuffer& buffer);

// A peer's allocation mapped into this process; unmapped on destruction.
class IpcMapping {
 public:
  IpcMapping(int device, const IpcHandle& handle);
  ~IpcMapping();
  IpcMapping(const IpcMapping&) = delete;
  IpcMapping& operator=(const IpcMapping&) = delete;
  char* data() const { return data_; }

 private:
  char* data_ = nullptr;
  int device_ = 0;
};

}  // namespace rf::cuda
