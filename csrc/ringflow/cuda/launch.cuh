// Shared by the .cu kernels (never by host .cc files): launch sizing, error checks, and the
// 16-byte vector loads. Every kernel is a grid-stride loop over 16-byte packs of elements
// plus a scalar loop over the elements before the first aligned pack and after the last one.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "ringflow/common/error.h"

namespace rf::cuda::detail {

constexpr int kThreads = 256;

// Blocks for `work` items: enough to fill every SM (8 blocks of 256 threads each), fewer for
// small work; the grid-stride loops cover the rest. Sized by the first device asked (a heuristic).
inline unsigned blocks_for(size_t work) {
  static int sm_count = [] {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      cudaGetLastError();  // clear it: the launch that follows reports its own error
      return 132;
    }
    return count;
  }();
  size_t wanted = (work + kThreads - 1) / kThreads;
  size_t most = static_cast<size_t>(sm_count) * 8;
  if (wanted < 1) wanted = 1;
  return static_cast<unsigned>(wanted < most ? wanted : most);
}

// Throws rf::Error naming the kernel when its launch failed (bad configuration, no device,
// an earlier asynchronous error surfacing here).
inline void check_launch(const char* kernel) {
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw Error(ErrorKind::kInternal, std::string("CUDA kernel ") + kernel +
                                          " failed to launch: " + cudaGetErrorString(status));
  }
}

// How a range of `count` elements of `size` bytes splits into [0, head) scalar, then `packs`
// 16-byte packs, then a scalar tail. Packs need every pointer at the same offset mod 16 (and
// that offset a multiple of the element size); otherwise everything is scalar.
struct Split {
  size_t head = 0;
  size_t packs = 0;
  // Work items for blocks_for: one per pack, one per scalar element.
  size_t work(size_t count, size_t size) const { return packs + (count - packs * (16 / size)); }
};
inline Split split_for_packs(const void* const* pointers, int n, size_t count, size_t size) {
  Split split;
  uintptr_t offset = reinterpret_cast<uintptr_t>(pointers[0]) % 16;
  bool aligned = offset % size == 0;
  for (int k = 1; k < n; ++k) aligned &= reinterpret_cast<uintptr_t>(pointers[k]) % 16 == offset;
  if (!aligned) {
    split.head = count;
    return split;
  }
  size_t head = (16 - offset) % 16 / size;
  split.head = head < count ? head : count;
  split.packs = (count - split.head) / (16 / size);
  return split;
}

// 16 bytes of T, moved as one uint4 load / store.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kLanes = 16 / sizeof(T);
  T lane[kLanes];
};
template <typename T>
__device__ inline Pack<T> load_pack(const T* address) {
  uint4 raw = *reinterpret_cast<const uint4*>(address);
  Pack<T> pack;
  memcpy(&pack, &raw, sizeof(pack));
  return pack;
}
template <typename T>
__device__ inline void store_pack(T* address, const Pack<T>& pack) {
  uint4 raw;
  memcpy(&raw, &pack, sizeof(raw));
  *reinterpret_cast<uint4*>(address) = raw;
}

__device__ inline size_t thread_index() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline size_t thread_count() { return static_cast<size_t>(gridDim.x) * blockDim.x; }

// The element index of the s-th scalar element: the head first, then the tail after the packs.
__device__ inline size_t scalar_index(size_t s, size_t head, size_t tail_begin) {
  return s < head ? s : tail_begin + (s - head);
}

// data[i] = fn(data[i]) for i < count: packs, then the scalar head and tail.
template <typename T, typename Fn>
__device__ void map_in_place(T* data, size_t count, const Split& split, Fn fn) {
  constexpr int kLanes = Pack<T>::kLanes;
  const size_t first = thread_index();
  const size_t stride = thread_count();
  for (size_t v = first; v < split.packs; v += stride) {
    T* address = data + split.head + v * kLanes;
    Pack<T> pack = load_pack(address);
#pragma unroll
    for (int j = 0; j < kLanes; ++j) pack.lane[j] = fn(pack.lane[j]);
    store_pack(address, pack);
  }
  const size_t tail_begin = split.head + split.packs * kLanes;
  const size_t scalars = split.head + (count - tail_begin);
  for (size_t s = first; s < scalars; s += stride) {
    const size_t i = scalar_index(s, split.head, tail_begin);
    data[i] = fn(data[i]);
  }
}

}  // namespace rf::cuda::detail
