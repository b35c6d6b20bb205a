// The CUDA runtime as the rest of the core sees it. No CUDA header is included here. This
// branch (issue 14, kernels) carries only the queries the bindings need; the lead's device.h
// (streams, events, buffers, IPC) is a superset with the same declarations.
#pragma once

namespace rf::cuda {

// Compiled with CUDA.
bool built();
// GPUs this process can use; 0 without a driver or a device (never throws).
int device_count();
// built() && device_count() > 0.
bool available();

}  // namespace rf::cuda
