// stream_synchronize (kernels.h): a host wait that turns a kernel fault into rf::Error.
#include <cuda_runtime.h>

#include "ringflow/common/check.h"
#include "ringflow/cuda/kernels.h"

namespace rf::cuda {

void stream_synchronize(void* stream) {
  cudaError_t status = cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
  RF_CHECK(status == cudaSuccess, kInternal)
      << "CUDA stream synchronize failed: " << cudaGetErrorString(status);
}

}  // namespace rf::cuda
