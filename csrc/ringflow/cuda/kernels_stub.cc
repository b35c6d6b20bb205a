// The kernel launches of a build without CUDA: same header, every launch throws. The host
// references (reference.cc) are built either way.
#include "ringflow/common/error.h"
#include "ringflow/cuda/kernels.h"

namespace rf::cuda {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw Error(ErrorKind::kInvalidArgument, std::string(what) + ": ringflow was built without CUDA");
}

}  // namespace

void reduce_fold(void*, const void* const*, int, size_t, DType, ReduceOp, void*) {
  no_cuda("reduce_fold");
}
void scale(void*, size_t, DType, double, void*) { no_cuda("scale"); }
void divide(void*, size_t, DType, int64_t, void*) { no_cuda("divide"); }
void cast(void*, DType, const void*, DType, size_t, void*) { no_cuda("cast"); }
void batched_copy(const CopyRegion*, size_t, void*) { no_cuda("batched_copy"); }
void stream_synchronize(void*) { no_cuda("stream_synchronize"); }

}  // namespace rf::cuda
