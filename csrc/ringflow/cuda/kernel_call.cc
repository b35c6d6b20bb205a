#include "ringflow/cuda/kernel_call.h"

#include "ringflow/common/check.h"
#include "ringflow/cuda/device.h"

namespace rf::cuda {

void run_kernel_call(const KernelCall& call, bool on_device) {
  namespace ref = reference;
  RF_CHECK(!on_device || available(), kInvalidArgument)
      << "no usable CUDA device for kernel '" << call.name << "' ("
      << (built() ? "no driver or GPU" : "built without CUDA") << ")";
  RF_CHECK(call.name != "cast" || (call.srcs.size() == 1 && call.src_dtype), kInvalidArgument)
      << "cast needs one src and a src_dtype";
  void* out = call.dst;
  const void* const* in = call.srcs.data();
  const int n = static_cast<int>(call.srcs.size());
  const size_t count = call.count;
  void* stream = call.stream;
  if (call.name == "reduce_fold") {
    on_device ? reduce_fold(out, in, n, count, call.dtype, call.op, stream)
              : ref::reduce_fold(out, in, n, count, call.dtype, call.op);
  } else if (call.name == "scale") {
    on_device ? scale(out, count, call.dtype, call.factor, stream)
              : ref::scale(out, count, call.dtype, call.factor);
  } else if (call.name == "divide") {
    on_device ? divide(out, count, call.dtype, call.divisor, stream)
              : ref::divide(out, count, call.dtype, call.divisor);
  } else if (call.name == "cast") {
    on_device ? cast(out, call.dtype, in[0], *call.src_dtype, count, stream)
              : ref::cast(out, call.dtype, in[0], *call.src_dtype, count);
  } else if (call.name == "batched_copy") {
    on_device ? batched_copy(call.regions.data(), call.regions.size(), stream)
              : ref::batched_copy(call.regions.data(), call.regions.size());
  } else {
    RF_THROW(kInvalidArgument) << "no CUDA kernel named '" << call.name << "'";
  }
  if (on_device && call.synchronize) stream_synchronize(stream);
}

}  // namespace rf::cuda
