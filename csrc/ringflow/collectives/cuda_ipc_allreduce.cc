#include "ringflow/collectives/cuda_ipc_allreduce.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>

#include "ringflow/common/check.h"
#include "ringflow/common/log.h"
#include "ringflow/cuda/kernels.h"

namespace rf {

namespace {

// What each rank tells the others when the buffers are set up.
struct Hello {
  char boot_id[40];  // this host's boot, from /proc: equal only on one host (any namespace)
  int32_t device;
  int32_t mapped;  // second exchange: 1 when this rank mapped every other rank's buffer
  cuda::IpcHandle handle;
};

std::string boot_id() {
  std::ifstream file("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(file, id);
  return id;
}

std::vector<Hello> exchange(const CollectiveContext& ctx, const Hello& mine) {
  GatherBlock block;
  block.header.assign(reinterpret_cast<const char*>(&mine),
                      reinterpret_cast<const char*>(&mine) + sizeof(Hello));
  GatheredBlocks all;
  bruck_allgather(ctx, block, [](const char*) { return size_t{0}; }, &all);
  std::vector<Hello> hellos(ctx.size());
  std::memcpy(hellos.data(), all.headers.data(), hellos.size() * sizeof(Hello));
  return hellos;
}

// Calls `copy(dst_offset_in_pass, part, first_element, count)` for each piece of parts that
// falls in elements [begin, end) of their concatenation.
template <typename Copy>
void for_each_piece(const std::vector<DevicePart>& parts, size_t begin, size_t end, Copy copy) {
  size_t start = 0;
  for (const DevicePart& part : parts) {
    const size_t lo = std::max(begin, start);
    const size_t hi = std::min(end, start + part.count);
    if (lo < hi) copy(lo - begin, part, lo - start, hi - lo);
    start += part.count;
    if (start >= end) break;
  }
}

}  // namespace

IpcPeerBuffers::IpcPeerBuffers(const CollectiveContext& ctx, int device, size_t capacity)
    : device_(device), capacity_(capacity) {
  const int size = ctx.size();
  const int me = ctx.rank();
  Hello mine{};
  const std::string id = boot_id();
  std::strncpy(mine.boot_id, id.c_str(), sizeof(mine.boot_id) - 1);
  mine.device = device;
  // A rank that cannot make its buffer (out of device memory, say) still takes part in both
  // exchanges, so every rank learns it and all take the host path instead.
  bool mapped = !id.empty();
  try {
    mine_ = std::make_unique<cuda::DeviceBuffer>(device, capacity);
    mine.handle = cuda::ipc_memory_handle(*mine_);
  } catch (const Error& error) {
    RF_LOG(kInfo) << "rank " << me << ": no CUDA IPC buffer of " << capacity << " bytes ("
                  << error.what() << "); CUDA allreduces go through host memory";
    mine_.reset();
    mapped = false;
  }
  const std::vector<Hello> hellos = exchange(ctx, mine);
  for (const Hello& hello : hellos) {
    mapped = mapped && std::strncmp(hello.boot_id, mine.boot_id, sizeof(mine.boot_id)) == 0;
  }
  mapped_.resize(size);
  buffers_.assign(size, nullptr);
  if (mine_) buffers_[me] = mine_->data();
  for (int q = 0; q < size && mapped; ++q) {
    if (q == me) continue;
    try {
      mapped_[q] = std::make_unique<cuda::IpcMapping>(device, hellos[q].handle);
      buffers_[q] = mapped_[q]->data();
    } catch (const Error& error) {
      RF_LOG(kDebug) << "rank " << me << ": cannot map rank " << q << "'s CUDA buffer ("
                     << error.what() << "); CUDA allreduces go through host memory";
      mapped = false;
    }
  }
  mine.mapped = mapped ? 1 : 0;
  usable_ = true;
  for (const Hello& hello : exchange(ctx, mine)) usable_ = usable_ && hello.mapped == 1;
  if (!usable_) {
    mapped_.clear();
    mine_.reset();
    buffers_.assign(size, nullptr);
  }
}

IpcPeerBuffers::~IpcPeerBuffers() = default;

void cuda_ipc_allreduce(const CollectiveContext& ctx, const IpcPeerBuffers& peers,
                        const std::vector<DevicePart>& parts, DType dtype, ReduceOp op,
                        double prescale, const DeviceFinisher& finish, cuda::Stream& stream) {
  RF_CHECK(peers.usable(), kInternal) << "cuda_ipc_allreduce without mapped peer buffers";
  const int size = ctx.size();
  const int me = ctx.rank();
  const size_t elem = dtype_size(dtype);
  void* s = stream.handle();
  char* mine = peers.buffer(me);
  size_t total = 0;
  for (const DevicePart& part : parts) total += part.count;
  const size_t per_pass = peers.capacity() / elem;
  RF_CHECK(per_pass > 0, kInternal) << "CUDA IPC buffer smaller than one element";
  cuda::DeviceScope scope(peers.device());  // kernels launch on the buffers' device
  cuda::Event drained(peers.device());      // the stream has drained: waited with a deadline

  for (size_t done = 0; done < total; done += per_pass) {
    const size_t count = std::min(per_pass, total - done);
    // 1. This rank's contribution into its own buffer.
    for_each_piece(
        parts, done, done + count, [&](size_t at, const DevicePart& part, size_t first, size_t n) {
          cuda::memcpy_async(mine + at * elem, static_cast<const char*>(part.in) + first * elem,
                             n * elem, s);
        });
    if (prescale != 1.0) cuda::scale(mine, count, dtype, prescale, s);
    drained.record(s);
    drained.wait(ctx.deadline);
    dissemination_barrier(ctx);

    // 2. Slice `me` of every buffer, folded in rank order, into slice `me` of this one. Only
    // this rank reads or writes that slice of its own buffer in this step.
    const std::vector<size_t> slices = even_blocks(count, size);
    const std::vector<size_t> offsets = block_offsets(slices);
    if (slices[me] > 0) {
      char* target = mine + offsets[me] * elem;
      std::vector<const void*> sources;
      for (int q = 0; q < size; ++q) sources.push_back(peers.buffer(q) + offsets[me] * elem);
      // At most kMaxFoldInputs per launch: later launches fold into what the first made.
      size_t next = 0;
      while (next < sources.size()) {
        std::vector<const void*> batch;
        if (next > 0) batch.push_back(target);
        while (next < sources.size() && static_cast<int>(batch.size()) < cuda::kMaxFoldInputs) {
          batch.push_back(sources[next++]);
        }
        cuda::reduce_fold(target, batch.data(), static_cast<int>(batch.size()), slices[me], dtype,
                          op, s);
      }
      finish(target, slices[me], s);
    }
    drained.record(s);
    drained.wait(ctx.deadline);
    dissemination_barrier(ctx);

    // 3. Every rank's finished slice to the outputs.
    for (int q = 0; q < size; ++q) {
      const char* slice = peers.buffer(q) + offsets[q] * elem;
      for_each_piece(parts, done + offsets[q], done + offsets[q] + slices[q],
                     [&](size_t at, const DevicePart& part, size_t first, size_t n) {
                       cuda::memcpy_async(static_cast<char*>(part.out) + first * elem,
                                          slice + at * elem, n * elem, s);
                     });
    }
    drained.record(s);
    drained.wait(ctx.deadline);
    // Nobody refills its buffer (next pass, next operation) while another rank still reads it.
    dissemination_barrier(ctx);
  }
}

}  // namespace rf
