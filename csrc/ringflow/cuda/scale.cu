// scale: data[i] = data[i] * factor in place (prescale / postscale), per math::scale_element.
#include "ringflow/cuda/element_math.h"
#include "ringflow/cuda/kernels.h"
#include "ringflow/cuda/launch.cuh"

namespace rf::cuda {
namespace {

__global__ void __launch_bounds__(detail::kThreads)
    scale_kernel(void* data, size_t count, detail::Split split, DType dtype, double factor) {
  math::with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, math::Bool>) {
      detail::map_in_place(static_cast<T*>(data), count, split,
                           [factor](T x) { return math::scale_element(x, factor); });
    }
  });
}

}  // namespace

void scale(void* data, size_t count, DType dtype, double factor, void* stream) {
  check_scale(dtype);
  if (count == 0 || factor == 1.0) return;  // as the CPU scale_by: int64 beyond 2^53 stays exact
  const void* pointers[] = {data};
  const detail::Split split = detail::split_for_packs(pointers, 1, count, dtype_size(dtype));
  scale_kernel<<<detail::blocks_for(split.work(count, dtype_size(dtype))), detail::kThreads, 0,
                 static_cast<cudaStream_t>(stream)>>>(data, count, split, dtype, factor);
  detail::check_launch("scale");
}

}  // namespace rf::cuda
