// Runtime dispatch to the best kernel build this CPU runs, plus argument checks.
#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/reduce/reduce.h"
#include "ringflow/reduce/reduce_kernels.h"

namespace rf {

namespace {

bool use_avx2() {
#if defined(RINGFLOW_HAVE_AVX2_KERNELS)
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                                env_config().kernel_isa == "auto";
  return supported;
#else
  return false;
#endif
}

}  // namespace

bool reduction_supported(DType dtype, ReduceOp op) {
  return dtype != DType::kBool || op == ReduceOp::kMin || op == ReduceOp::kMax;
}

const char* reduce_kernel_isa() { return use_avx2() ? "avx2+f16c" : "generic"; }

void reduce(const void* a, const void* b, void* dst, size_t count, DType dtype, ReduceOp op) {
  RF_CHECK(reduction_supported(dtype, op), kInvalidArgument)
      << reduce_op_name(op) << " is not supported for dtype " << dtype_name(dtype);
  if (count == 0) return;
#if defined(RINGFLOW_HAVE_AVX2_KERNELS)
  if (use_avx2()) return avx2::reduce_kernel(a, b, dst, count, dtype, op);
#endif
  generic::reduce_kernel(a, b, dst, count, dtype, op);
}

void reduce_into(void* acc, const void* src, size_t count, DType dtype, ReduceOp op) {
  reduce(acc, src, acc, count, dtype, op);
}

void scale_by(void* buf, size_t count, DType dtype, double factor) {
  if (count == 0 || factor == 1.0) return;
  bool done = false;
#if defined(RINGFLOW_HAVE_AVX2_KERNELS)
  if (use_avx2()) done = avx2::scale_kernel(buf, count, dtype, factor);
#endif
  if (!done) done = generic::scale_kernel(buf, count, dtype, factor);
  RF_CHECK(done, kInternal) << "no arithmetic kernel for dtype " << dtype_name(dtype);
}

}  // namespace rf
