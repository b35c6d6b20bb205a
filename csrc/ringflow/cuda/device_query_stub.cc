// The device queries of a build without CUDA: no devices, never an error.
#include "ringflow/cuda/device.h"

namespace rf::cuda {

bool built() { return false; }
int device_count() { return 0; }
bool available() { return false; }

}  // namespace rf::cuda
