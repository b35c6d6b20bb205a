// reduce_fold: dst = srcs[n-1] op (... op (srcs[1] op srcs[0])), elementwise, n <= 8 inputs in
// one pass (a ring step folds a received chunk into the local one; a one-GPU ring folds every
// rank's chunk at once). One kernel per dtype; the op is dispatched at run time inside it.
#include "ringflow/cuda/element_math.h"
#include "ringflow/cuda/kernels.h"
#include "ringflow/cuda/launch.cuh"

namespace rf::cuda {
namespace {

struct FoldParams {
  void* dst;
  const void* srcs[kMaxFoldInputs];
  int n;
  size_t count;
  detail::Split split;
  ReduceOp op;
};

template <typename T, typename Op>
__device__ void fold(const FoldParams& p, Op op) {
  using C = math::Compute<T>;
  using Value = typename C::type;
  constexpr int kLanes = detail::Pack<T>::kLanes;
  const size_t first = detail::thread_index();
  const size_t stride = detail::thread_count();
  T* dst = static_cast<T*>(p.dst);

  for (size_t v = first; v < p.split.packs; v += stride) {
    const size_t base = p.split.head + v * kLanes;
    // The first two inputs are loaded together (both in flight at once); more inputs, rarer,
    // one at a time. Unrolling over all eight made this file build 5x slower.
    const detail::Pack<T> in0 = detail::load_pack(static_cast<const T*>(p.srcs[0]) + base);
    const detail::Pack<T> in1 =
        p.n > 1 ? detail::load_pack(static_cast<const T*>(p.srcs[1]) + base) : in0;
    Value acc[kLanes];
#pragma unroll
    for (int j = 0; j < kLanes; ++j) acc[j] = C::load(in0.lane[j]);
    if (p.n > 1) {
#pragma unroll
      for (int j = 0; j < kLanes; ++j) acc[j] = op(C::load(in1.lane[j]), acc[j]);
    }
#pragma unroll 1
    for (int k = 2; k < p.n; ++k) {
      const detail::Pack<T> in = detail::load_pack(static_cast<const T*>(p.srcs[k]) + base);
#pragma unroll
      for (int j = 0; j < kLanes; ++j) acc[j] = op(C::load(in.lane[j]), acc[j]);
    }
    detail::Pack<T> out;
#pragma unroll
    for (int j = 0; j < kLanes; ++j) out.lane[j] = C::store(acc[j]);
    detail::store_pack(dst + base, out);
  }

  const size_t tail_begin = p.split.head + p.split.packs * kLanes;
  const size_t scalars = p.split.head + (p.count - tail_begin);
  for (size_t s = first; s < scalars; s += stride) {
    const size_t i = detail::scalar_index(s, p.split.head, tail_begin);
    Value acc = C::load(static_cast<const T*>(p.srcs[0])[i]);
    for (int k = 1; k < p.n; ++k) acc = op(C::load(static_cast<const T*>(p.srcs[k])[i]), acc);
    dst[i] = C::store(acc);
  }
}

// One kernel per storage type (its registers are its own: float32's a + b is not held to the
// occupancy of float16's conversions); the op is dispatched inside, once per thread.
// __grid_constant__: srcs[k] is indexed at run time, read in place instead of copied to a stack.
template <typename T>
__global__ void __launch_bounds__(detail::kThreads)
    reduce_fold_kernel(const __grid_constant__ FoldParams p) {
  math::with_operator(p.op, [&](auto op) { fold<T>(p, op); });
}

}  // namespace

void reduce_fold(void* dst, const void* const* srcs, int n, size_t count, DType dtype, ReduceOp op,
                 void* stream) {
  check_fold(n, dtype);
  if (count == 0) return;
  FoldParams params{};
  params.dst = dst;
  const void* pointers[kMaxFoldInputs + 1] = {dst};
  for (int k = 0; k < n; ++k) params.srcs[k] = pointers[k + 1] = srcs[k];
  params.n = n;
  params.count = count;
  params.split = detail::split_for_packs(pointers, n + 1, count, dtype_size(dtype));
  params.op = op;
  const size_t work = params.split.work(count, dtype_size(dtype));
  math::with_storage_type(dtype, [&](auto tag) {
    reduce_fold_kernel<decltype(tag)>
        <<<detail::blocks_for(work), detail::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
            params);
  });
  detail::check_launch("reduce_fold");
}

}  // namespace rf::cuda
