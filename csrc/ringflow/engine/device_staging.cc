#include "ringflow/engine/device_staging.h"

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

DeviceStaging::DeviceStaging(PinnedPool& pool, const DeviceTensor& tensor, size_t in_bytes,
                             bool writes_in)
    : pool_(pool), tensor_(tensor), in_bytes_(in_bytes), writes_in_(writes_in) {
  cuda::DeviceScope scope(tensor.device);
  in_ = pool.take(tensor.device, in_bytes);
  if (tensor.out != nullptr && tensor.out != tensor.in) {
    out_ = pool.take(tensor.device, tensor.out_bytes);
  }
  cuda::memcpy_async(in_.buffer->data(), tensor.in, in_bytes, tensor.stream);
  in_.last_use->record(tensor.stream);
}

DeviceStaging::~DeviceStaging() {
  pool_.give_back(std::move(in_));
  pool_.give_back(std::move(out_));
}

void* DeviceStaging::host_out() const {
  return out_.buffer ? out_.buffer->data() : in_.buffer->data();
}

void DeviceStaging::wait_for_input() {
  if (input_ready_) return;
  in_.last_use->synchronize();
  input_ready_ = true;
}

void DeviceStaging::return_result() {
  cuda::DeviceScope scope(tensor_.device);
  if (writes_in_) {
    cuda::memcpy_async(tensor_.in, in_.buffer->data(), in_bytes_, tensor_.stream);
    in_.last_use->record(tensor_.stream);
  } else if (tensor_.out != nullptr) {
    PinnedPool::Slot& from = out_.buffer ? out_ : in_;
    cuda::memcpy_async(tensor_.out, from.buffer->data(), tensor_.out_bytes, tensor_.stream);
    from.last_use->record(tensor_.stream);
  }
}

}  // namespace rf
