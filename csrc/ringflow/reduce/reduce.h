// CPU reduction kernels. One runtime dispatch on (dtype, op) picks a tight loop; float16 and
// bfloat16 are computed in float32 and rounded back after every call, because the wire and the
// buffers carry the narrow type.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ringflow/common/dtype.h"

namespace rf {

// dst[i] = a[i] (op) b[i] for i < count. dst may be a or b. Average reduces like Sum;
// scale_by(finishing_factor(...)) finishes it. bool supports only Min (and) / Max (or). (op) is
// commutative bit for bit (IEEE + and * are), so which operand is "a" never changes a result.
void reduce(const void* a, const void* b, void* dst, size_t count, DType dtype, ReduceOp op);

// acc[i] = acc[i] (op) src[i].
void reduce_into(void* acc, const void* src, size_t count, DType dtype, ReduceOp op);

// buf[i] = factor * buf[i], as Horovod 0.28.1 scales (its ScaleBufferCPUImpl); a factor of
// exactly 1.0 leaves buf untouched. Per dtype (the one definition: reduce_kernels.inc):
//   integers          (T)trunc(factor * (double)x)  toward zero; saturating, NaN -> 0
//   float64           factor * x
//   float32           (float)factor * x
//   float16/bfloat16  round_to_type((float)factor * (float)x), nearest even
void scale_by(void* buf, size_t count, DType dtype, double factor);

// The factor scale_by applies to a finished reduction: postscale, divided by the divisor for
// Average. Horovod averages this way (postscale_factor /= size, then one multiplication), so
// an integer Average truncates toward zero and a float one multiplies by the rounded 1/N.
inline double finishing_factor(ReduceOp op, double postscale, int64_t divisor) {
  return op == ReduceOp::kAverage ? postscale / static_cast<double>(divisor) : postscale;
}

// Whether (dtype, op) is a supported reduction; false for bool with Sum/Average/Product.
bool reduction_supported(DType dtype, ReduceOp op);

// Which kernel build runs on this CPU: "avx2+f16c" or "generic".
const char* reduce_kernel_isa();

}  // namespace rf
