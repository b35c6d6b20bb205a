// One kernel launch (or its host reference) named by a string: what the test-only bindings
// `_cuda_kernel` / `_cuda_reference` call, kept here so the binding file only translates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ringflow/cuda/kernels.h"

namespace rf::cuda {

struct KernelCall {
  std::string name;  // reduce_fold, scale, divide, cast or batched_copy
  void* dst = nullptr;
  std::vector<const void*> srcs;
  size_t count = 0;
  DType dtype = DType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  double factor = 1.0;
  int64_t divisor = 1;
  std::optional<DType> src_dtype;   // cast
  std::vector<CopyRegion> regions;  // batched_copy
  void* stream = nullptr;
  bool synchronize = true;  // on the device: wait for the stream afterwards
};

// Runs the kernel on device addresses (on_device) or its host reference on host addresses.
// Throws rf::Error (InvalidArgument) for an unknown name, bad arguments or no usable GPU.
void run_kernel_call(const KernelCall& call, bool on_device);

}  // namespace rf::cuda
