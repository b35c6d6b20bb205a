// The device queries of a CUDA build. The runtime is linked statically and loads the driver
// (libcuda) on first use, so on a machine without a driver or a GPU these answer "no" instead
// of failing to import.
#include <cuda_runtime.h>

#include "ringflow/cuda/device.h"

namespace rf::cuda {

bool built() { return true; }

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the error, answer 0
    return 0;
  }
  return count;
}

bool available() { return device_count() > 0; }

}  // namespace rf::cuda
