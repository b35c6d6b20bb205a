// Baseline build of the reduction kernels: any CPU this compiler targets.
#define RF_KERNEL_NAMESPACE generic
#define RF_KERNEL_F16C 0
#include "ringflow/reduce/reduce_kernels.inc"
