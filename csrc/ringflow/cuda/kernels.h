// The CUDA kernels the device paths launch, and their host references. No CUDA header: a
// stream travels as void* (a cudaStream_t; nullptr is the legacy default stream). Launches are
// asynchronous on that stream; counts are elements. Without CUDA (kernels_stub.cc) every launch
// throws rf::Error "ringflow was built without CUDA"; the references always exist.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ringflow/common/dtype.h"

namespace rf::cuda {

// The most inputs one reduce_fold reads (kernel parameters carry the pointers by value).
constexpr int kMaxFoldInputs = 8;

// dst[i] = srcs[n-1][i] op (... op (srcs[1][i] op srcs[0][i])) for n in 1..kMaxFoldInputs.
// srcs is a host array of device pointers; dst may alias any of them. float16/bfloat16
// accumulate in float32 and round once; bool: Sum/Average/Max = or, Min/Product = and;
// Average folds as Sum (divide() finishes it).
void reduce_fold(void* dst, const void* const* srcs, int n, size_t count, DType dtype, ReduceOp op,
                 void* stream);

// data[i] *= factor (see math::scale_element: integers in float64, truncated). Not for bool.
// factor == 1.0 does nothing, as the CPU scale_by.
void scale(void* data, size_t count, DType dtype, double factor, void* stream);

// data[i] /= divisor, divisor > 0 (see math::divide_element). Not for bool. divisor == 1 does
// nothing, as the CPU divide_by.
void divide(void* data, size_t count, DType dtype, int64_t divisor, void* stream);

// dst = src converted: float32 <-> float16 / bfloat16 (round to nearest even); the same dtype
// copies. Anything else is an InvalidArgument error.
void cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t count, void* stream);

// Many device-to-device copies in few launches (device fusion buffer pack / unpack). regions
// is a host array; the regions must not overlap each other's destinations.
struct CopyRegion {
  void* dst;
  const void* src;
  size_t bytes;
};
void batched_copy(const CopyRegion* regions, size_t n, void* stream);

// Waits for everything queued on stream; a fault in an earlier kernel surfaces here as rf::Error
// (used by the test bindings, which run each kernel synchronously).
void stream_synchronize(void* stream);

// The same operations on host memory, with the kernels' element math (element_math.h), for
// the CPU tests. Argument checks and errors are the kernels'.
namespace reference {
void reduce_fold(void* dst, const void* const* srcs, int n, size_t count, DType dtype, ReduceOp op);
void scale(void* data, size_t count, DType dtype, double factor);
void divide(void* data, size_t count, DType dtype, int64_t divisor);
void cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t count);
void batched_copy(const CopyRegion* regions, size_t n);
}  // namespace reference

// Argument checks shared by the kernels and the references (throw rf::Error kInvalidArgument).
void check_fold(int n, DType dtype);
void check_scale(DType dtype);
void check_divide(DType dtype, int64_t divisor);
void check_cast(DType dst_dtype, DType src_dtype);

}  // namespace rf::cuda
