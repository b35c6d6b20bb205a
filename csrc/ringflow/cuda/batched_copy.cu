// batched_copy: many device-to-device copies (fusion buffer pack / unpack) in one launch per
// 128 regions. Each region is cut into 64 KiB chunks and every block copies one chunk, so a
// large region gets many blocks and a tiny one a single block; inside a chunk, the widest word
// that both addresses agree on modulo 16 (16 bytes for the usual aligned case), bytes at the
// ends.
#include "ringflow/common/check.h"
#include "ringflow/cuda/kernels.h"
#include "ringflow/cuda/launch.cuh"

namespace rf::cuda {
namespace {

constexpr size_t kRegionsPerLaunch = 128;  // keeps the parameters under the classic 4 KiB
constexpr size_t kChunkBytes = 64 << 10;

struct CopyBatch {
  CopyRegion region[kRegionsPerLaunch];
  uint32_t first_chunk[kRegionsPerLaunch + 1];  // prefix sums: region r owns chunks [r, r+1)
  uint32_t n;
};

template <typename W>
__device__ void copy_words(char* dst, const char* src, size_t bytes) {
  size_t head = (sizeof(W) - reinterpret_cast<uintptr_t>(dst) % sizeof(W)) % sizeof(W);
  if (head > bytes) head = bytes;
  const size_t words = (bytes - head) / sizeof(W);
  const W* from = reinterpret_cast<const W*>(src + head);
  W* to = reinterpret_cast<W*>(dst + head);
  for (size_t w = threadIdx.x; w < words; w += blockDim.x) to[w] = from[w];
  const size_t tail_begin = head + words * sizeof(W);
  const size_t scalars = head + (bytes - tail_begin);
  for (size_t s = threadIdx.x; s < scalars; s += blockDim.x) {
    const size_t i = detail::scalar_index(s, head, tail_begin);
    dst[i] = src[i];
  }
}

__global__ void __launch_bounds__(detail::kThreads) batched_copy_kernel(CopyBatch batch) {
  // The region whose chunk range holds this block: the last r with first_chunk[r] <= block.
  uint32_t low = 0, high = batch.n;
  while (high - low > 1) {
    const uint32_t mid = (low + high) / 2;
    if (batch.first_chunk[mid] <= blockIdx.x) {
      low = mid;
    } else {
      high = mid;
    }
  }
  const CopyRegion& region = batch.region[low];
  const size_t offset = static_cast<size_t>(blockIdx.x - batch.first_chunk[low]) * kChunkBytes;
  const size_t left = region.bytes - offset;
  const size_t bytes = left < kChunkBytes ? left : kChunkBytes;
  char* dst = static_cast<char*>(region.dst) + offset;
  const char* src = static_cast<const char*>(region.src) + offset;
  const uintptr_t agree = reinterpret_cast<uintptr_t>(dst) ^ reinterpret_cast<uintptr_t>(src);
  if (agree % 16 == 0) {
    copy_words<uint4>(dst, src, bytes);
  } else if (agree % 8 == 0) {
    copy_words<unsigned long long>(dst, src, bytes);
  } else if (agree % 4 == 0) {
    copy_words<unsigned>(dst, src, bytes);
  } else if (agree % 2 == 0) {
    copy_words<unsigned short>(dst, src, bytes);
  } else {
    copy_words<unsigned char>(dst, src, bytes);
  }
}

}  // namespace

void batched_copy(const CopyRegion* regions, size_t n, void* stream) {
  for (size_t begin = 0; begin < n; begin += kRegionsPerLaunch) {
    CopyBatch batch{};
    size_t chunks = 0;
    for (size_t r = begin; r < n && r < begin + kRegionsPerLaunch; ++r) {
      batch.region[batch.n] = regions[r];
      batch.first_chunk[batch.n] = static_cast<uint32_t>(chunks);
      chunks += (regions[r].bytes + kChunkBytes - 1) / kChunkBytes;
      ++batch.n;
      RF_CHECK(chunks < (size_t{1} << 31), kInvalidArgument)
          << "batched_copy: more than 128 TiB in one batch of regions";
    }
    batch.first_chunk[batch.n] = static_cast<uint32_t>(chunks);
    if (chunks == 0) continue;  // only empty regions
    batched_copy_kernel<<<static_cast<unsigned>(chunks), detail::kThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(batch);
    detail::check_launch("batched_copy");
  }
}

}  // namespace rf::cuda
