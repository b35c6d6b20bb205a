// cast: float32 <-> float16 / bfloat16 for gradient compression, per math::cast_element. The
// two sides have different element sizes, so a pack here is 8 elements (16 bytes of a 16-bit
// type, 32 of float32), aligned on both sides.
#include "ringflow/common/check.h"
#include "ringflow/cuda/element_math.h"
#include "ringflow/cuda/kernels.h"
#include "ringflow/cuda/launch.cuh"

namespace rf::cuda {
namespace {

constexpr int kLanes = 8;

template <typename T>
struct alignas(16) Lanes {
  T lane[kLanes];
};
template <typename T>
__device__ Lanes<T> load_lanes(const T* address) {
  Lanes<T> lanes;
  const uint4* words = reinterpret_cast<const uint4*>(address);
  uint4 raw[sizeof(Lanes<T>) / 16];
#pragma unroll
  for (size_t w = 0; w < sizeof(Lanes<T>) / 16; ++w) raw[w] = words[w];
  memcpy(&lanes, raw, sizeof(lanes));
  return lanes;
}
template <typename T>
__device__ void store_lanes(T* address, const Lanes<T>& lanes) {
  uint4 raw[sizeof(Lanes<T>) / 16];
  memcpy(raw, &lanes, sizeof(lanes));
  uint4* words = reinterpret_cast<uint4*>(address);
#pragma unroll
  for (size_t w = 0; w < sizeof(Lanes<T>) / 16; ++w) words[w] = raw[w];
}

template <typename D, typename S>
__device__ void convert(D* dst, const S* src, size_t count, detail::Split split) {
  const size_t first = detail::thread_index();
  const size_t stride = detail::thread_count();
  for (size_t v = first; v < split.packs; v += stride) {
    const size_t base = split.head + v * kLanes;
    Lanes<S> in = load_lanes(src + base);
    Lanes<D> out;
#pragma unroll
    for (int j = 0; j < kLanes; ++j) out.lane[j] = math::cast_element<D>(in.lane[j]);
    store_lanes(dst + base, out);
  }
  const size_t tail_begin = split.head + split.packs * kLanes;
  const size_t scalars = split.head + (count - tail_begin);
  for (size_t s = first; s < scalars; s += stride) {
    const size_t i = detail::scalar_index(s, split.head, tail_begin);
    dst[i] = math::cast_element<D>(src[i]);
  }
}

template <typename D, typename S>
__global__ void __launch_bounds__(detail::kThreads)
    cast_kernel(D* dst, const S* src, size_t count, detail::Split split) {
  convert(dst, src, count, split);
}

// The first element at which both sides start a 16-byte-aligned pack, or count (all scalar).
detail::Split split_for_cast(const void* dst, size_t dst_size, const void* src, size_t src_size,
                             size_t count) {
  detail::Split split;
  split.head = count;
  for (size_t h = 0; h < kLanes && h < count; ++h) {
    if ((reinterpret_cast<uintptr_t>(dst) + h * dst_size) % 16 == 0 &&
        (reinterpret_cast<uintptr_t>(src) + h * src_size) % 16 == 0) {
      split.head = h;
      split.packs = (count - h) / kLanes;
      break;
    }
  }
  return split;
}

template <typename D, typename S>
void launch(void* dst, const void* src, size_t count, cudaStream_t stream) {
  const detail::Split split = split_for_cast(dst, sizeof(D), src, sizeof(S), count);
  const unsigned blocks = detail::blocks_for(split.packs + (count - split.packs * kLanes));
  cast_kernel<<<blocks, detail::kThreads, 0, stream>>>(static_cast<D*>(dst),
                                                       static_cast<const S*>(src), count, split);
  detail::check_launch("cast");
}

}  // namespace

void cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t count,
          void* stream) {
  check_cast(dst_dtype, src_dtype);
  if (count == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dst_dtype == src_dtype) {
    cudaError_t status =
        cudaMemcpyAsync(dst, src, count * dtype_size(dst_dtype), cudaMemcpyDeviceToDevice, s);
    RF_CHECK(status == cudaSuccess, kInternal)
        << "cast: cudaMemcpyAsync failed: " << cudaGetErrorString(status);
    return;
  }
  using math::BFloat16;
  using math::Half;
  if (dst_dtype == DType::kFloat16) return launch<Half, float>(dst, src, count, s);
  if (dst_dtype == DType::kBFloat16) return launch<BFloat16, float>(dst, src, count, s);
  if (src_dtype == DType::kFloat16) return launch<float, Half>(dst, src, count, s);
  return launch<float, BFloat16>(dst, src, count, s);
}

}  // namespace rf::cuda
