#include "ringflow/engine/device_staging.h"

#include <chrono>
#include <utility>

namespace rf {

namespace {

// Allocation sizes: powers of two up to 64 MiB, then multiples of 16 MiB, so that a training
// step's tensors reuse a handful of buffers.
size_t rounded(size_t bytes) {
  constexpr size_t kSmall = size_t{64} << 10;
  constexpr size_t kLarge = size_t{64} << 20;
  constexpr size_t kStep = size_t{16} << 20;
  if (bytes <= kSmall) return kSmall;
  if (bytes > kLarge) return (bytes + kStep - 1) / kStep * kStep;
  size_t size = kSmall;
  while (size < bytes) size <<= 1;
  return size;
}

// Free slots kept for reuse, at most this many bytes in all (the rest go back to CUDA).
constexpr size_t kPoolKeepBytes = size_t{1} << 30;

}  // namespace

std::string memory_name(int device) {
  return device < 0 ? std::string("host memory") : "CUDA device " + std::to_string(device);
}

PinnedPool::Slot PinnedPool::take(int device, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      const Slot& slot = free_[i];
      if (slot.device != device || slot.buffer->bytes() < bytes) continue;
      if (best < free_.size() && free_[best].buffer->bytes() <= slot.buffer->bytes()) continue;
      if (slot.last_use->query()) best = i;
    }
    if (best < free_.size()) {
      Slot slot = std::move(free_[best]);
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
      return slot;
    }
  }
  Slot slot;
  slot.device = device;
  slot.buffer = std::make_unique<cuda::PinnedBuffer>(rounded(bytes));
  slot.last_use = std::make_unique<cuda::Event>(device);
  return slot;
}

void PinnedPool::give_back(Slot slot) {
  if (!slot.buffer) return;
  std::lock_guard<std::mutex> lock(mutex_);
  size_t kept = 0;
  for (const Slot& s : free_) kept += s.buffer->bytes();
  if (kept + slot.buffer->bytes() > kPoolKeepBytes) {
    slot.last_use->synchronize();  // freeing pinned memory under a pending copy is undefined
    return;
  }
  free_.push_back(std::move(slot));
}

cuda::Stream& DeviceStreams::on(int device) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (by_device_.size() <= static_cast<size_t>(device)) by_device_.resize(device + 1);
  if (!by_device_[device]) by_device_[device] = std::make_unique<cuda::Stream>(device);
  return *by_device_[device];
}

DeviceStaging::DeviceStaging(const DeviceTensor& tensor, size_t in_bytes, bool writes_in)
    : tensor_(tensor),
      in_bytes_(in_bytes),
      writes_in_(writes_in),
      ready_(tensor.device),
      done_(tensor.device) {
  ready_.record(tensor.stream);
}

DeviceStaging::~DeviceStaging() {
  if (!pool_) return;
  pool_->give_back(std::move(in_));
  pool_->give_back(std::move(out_));
}

void* DeviceStaging::stage_in(PinnedPool& pool, cuda::Stream& stream, const Deadline& deadline) {
  if (in_.buffer) return in_.buffer->data();
  cuda::DeviceScope scope(tensor_.device);
  pool_ = &pool;
  in_ = pool.take(tensor_.device, in_bytes_);
  if (tensor_.out != nullptr && tensor_.out != tensor_.in) {
    out_ = pool.take(tensor_.device, tensor_.out_bytes);
  }
  ready_.make_wait(stream.handle());
  cuda::memcpy_async(in_.buffer->data(), tensor_.in, in_bytes_, stream.handle());
  in_.last_use->record(stream.handle());
  in_.last_use->wait(deadline);
  return in_.buffer->data();
}

void* DeviceStaging::host_out() const {
  if (out_.buffer) return out_.buffer->data();
  return host_in();
}

void DeviceStaging::return_result(cuda::Stream& stream) {
  cuda::DeviceScope scope(tensor_.device);
  if (in_.buffer) {  // the host path: the result is in pinned memory
    if (writes_in_) {
      cuda::memcpy_async(tensor_.in, in_.buffer->data(), in_bytes_, stream.handle());
      in_.last_use->record(stream.handle());
    } else if (tensor_.out != nullptr) {
      PinnedPool::Slot& from = out_.buffer ? out_ : in_;
      cuda::memcpy_async(tensor_.out, from.buffer->data(), tensor_.out_bytes, stream.handle());
      from.last_use->record(stream.handle());
    }
  }
  done_.record(stream.handle());
  done_.make_wait(tensor_.stream);
}

StagingTimes time_staging(int device, void* device_buffer, size_t bytes, int iterations) {
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  };
  StagingTimes times;
  cuda::DeviceScope scope(device);
  cuda::Stream stream(device);
  cuda::PinnedBuffer pinned(bytes);
  PinnedPool pool;
  DeviceStreams streams;
  DeviceTensor tensor;
  tensor.device = device;
  tensor.stream = stream.handle();
  tensor.in = tensor.out = device_buffer;
  tensor.out_bytes = bytes;
  for (int warm = 0; warm < 2; ++warm) {  // first use: pool, streams, driver mappings
    DeviceStaging staging(tensor, bytes, false);
    staging.stage_in(pool, streams.on(device), Deadline::after_seconds(60));
    staging.return_result(streams.on(device));
    stream.synchronize();
  }
  Clock::time_point start = Clock::now();
  for (int i = 0; i < iterations; ++i) {
    cuda::memcpy_async(pinned.data(), device_buffer, bytes, stream.handle());
    stream.synchronize();
  }
  times.memcpy_d2h_s = seconds(start) / iterations;
  start = Clock::now();
  for (int i = 0; i < iterations; ++i) {
    cuda::memcpy_async(device_buffer, pinned.data(), bytes, stream.handle());
    stream.synchronize();
  }
  times.memcpy_h2d_s = seconds(start) / iterations;
  start = Clock::now();
  for (int i = 0; i < iterations; ++i) {
    DeviceStaging staging(tensor, bytes, false);
    staging.stage_in(pool, streams.on(device), Deadline::after_seconds(60));
    staging.return_result(streams.on(device));
    stream.synchronize();
  }
  times.staged_round_trip_s = seconds(start) / iterations;
  return times;
}

}  // namespace rf
