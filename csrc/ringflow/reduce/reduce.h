// CPU reduction kernels. One runtime dispatch on (dtype, op) picks a tight loop; float16 and
// bfloat16 are computed in float32 and rounded back after every call, because the wire and the
// buffers carry the narrow type.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ringflow/common/dtype.h"

namespace rf {

// dst[i] = a[i] (op) b[i] for i < count. dst may be a or b. Average reduces like Sum;
// divide_by() finishes it. bool supports only Min (and) / Max (or). (op) is commutative bit for
// bit (IEEE + and * are), so which operand is "a" never changes a result.
void reduce(const void* a, const void* b, void* dst, size_t count, DType dtype, ReduceOp op);

// acc[i] = acc[i] (op) src[i].
void reduce_into(void* acc, const void* src, size_t count, DType dtype, ReduceOp op);

// buf[i] = buf[i] / divisor. Floats divide in their accumulation type (float32 for 16-bit
// floats); integers round to nearest, ties to even, exactly.
void divide_by(void* buf, size_t count, DType dtype, int64_t divisor);

// buf[i] = buf[i] * factor. Floats multiply in their accumulation type; integers multiply in
// float64, round to nearest even and saturate to the type's range.
void scale_by(void* buf, size_t count, DType dtype, double factor);

// Whether (dtype, op) is a supported reduction; false for bool with Sum/Average/Product.
bool reduction_supported(DType dtype, ReduceOp op);

// Which kernel build runs on this CPU: "avx2+f16c" or "generic".
const char* reduce_kernel_isa();

}  // namespace rf
