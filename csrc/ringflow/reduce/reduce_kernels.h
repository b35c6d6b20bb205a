// The per-instruction-set kernel entry points behind reduce.h (see reduce_kernels.inc).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ringflow/common/dtype.h"

#define RF_DECLARE_REDUCE_KERNELS(ns)                                                    \
  namespace rf::ns {                                                                     \
  void reduce_kernel(const void* a, const void* b, void* dst, size_t count, DType dtype, \
                     ReduceOp op);                                                       \
  bool scale_kernel(void* buf, size_t count, DType dtype, double factor);                \
  }

RF_DECLARE_REDUCE_KERNELS(generic)
RF_DECLARE_REDUCE_KERNELS(avx2)
