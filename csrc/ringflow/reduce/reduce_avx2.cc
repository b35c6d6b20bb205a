// AVX2 + F16C build of the reduction kernels (compiled with -mavx2 -mf16c; only called when
// the CPU reports both).
#define RF_KERNEL_NAMESPACE avx2
#define RF_KERNEL_F16C 1
#include "ringflow/reduce/reduce_kernels.inc"
