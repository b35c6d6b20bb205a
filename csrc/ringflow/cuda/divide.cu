// divide: data[i] = data[i] / divisor in place (Average), per math::divide_element.
#include "ringflow/cuda/element_math.h"
#include "ringflow/cuda/kernels.h"
#include "ringflow/cuda/launch.cuh"

namespace rf::cuda {
namespace {

__global__ void __launch_bounds__(detail::kThreads)
    divide_kernel(void* data, size_t count, detail::Split split, DType dtype, int64_t divisor) {
  math::with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, math::Bool>) {
      detail::map_in_place(static_cast<T*>(data), count, split,
                           [divisor](T x) { return math::divide_element(x, divisor); });
    }
  });
}

}  // namespace

void divide(void* data, size_t count, DType dtype, int64_t divisor, void* stream) {
  check_divide(dtype, divisor);
  if (count == 0 || divisor == 1) return;  // as the CPU divide_by: int64 beyond 2^53 stays exact
  const void* pointers[] = {data};
  const detail::Split split = detail::split_for_packs(pointers, 1, count, dtype_size(dtype));
  divide_kernel<<<detail::blocks_for(split.work(count, dtype_size(dtype))), detail::kThreads, 0,
                  static_cast<cudaStream_t>(stream)>>>(data, count, split, dtype, divisor);
  detail::check_launch("divide");
}

}  // namespace rf::cuda
