// Device allreduce without the host: when every member of the set is on this host and has
// mapped the others' CUDA buffers, a bucket of CUDA tensors is reduced by cuda_ipc_allreduce on
// the engine's stream. Anything else about CUDA tensors (other collectives, ranks on other
// hosts, joined ranks standing in with host zeros) goes through pinned host memory instead.
#include "ringflow/collectives/cuda_ipc_allreduce.h"
#include "ringflow/common/env.h"
#include "ringflow/cuda/kernels.h"
#include "ringflow/engine/engine.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

namespace {

// The peers' buffers: at least 1 MiB, a power of two up to the RINGFLOW_CUDA_IPC_BYTES budget,
// so they are set up again only when a larger operation comes (every rank alike).
size_t ipc_capacity(size_t bytes, size_t budget) {
  size_t capacity = size_t{1} << 20;
  while (capacity < bytes && capacity < budget) capacity <<= 1;
  return std::min(capacity, budget);
}

}  // namespace

bool Engine::try_device_allreduce(std::vector<Ready>& bucket, const CollectiveContext& ctx) {
  const Ready& first = bucket[0];
  const Request& request = first.local->submission.request;
  const std::vector<int>& members = first.tensor.members;
  const size_t budget = env_config().cuda_ipc_bytes;
  // Every condition below reads what every member knows alike (descriptors, settings), so all
  // take the same path.
  if (request.kind != OpKind::kAllreduce || !request.on_device || budget == 0 || size_ < 2 ||
      first.tensor.contributors() != static_cast<int>(members.size())) {
    return false;
  }
  const DType dtype = request.dtype;
  const size_t elem = dtype_size(dtype);
  size_t total = 0;
  for (const Ready& item : bucket) total += descriptor_elements(item.local->own);
  if (total == 0 || budget < elem) return false;

  const size_t capacity = ipc_capacity(total * elem, budget);
  std::unique_ptr<IpcPeerBuffers>& peers = ipc_peers_[members];
  if (!peers || (peers->usable() && peers->capacity() < capacity)) {
    peers.reset();  // the old mappings go before the new buffers are made
    peers = std::make_unique<IpcPeerBuffers>(ctx, first.local->submission.device.device, capacity);
  }
  if (!peers->usable()) return false;  // decided alike on every member, once per set

  cuda::Stream& stream = device_streams_.on(peers->device());
  std::vector<DevicePart> parts;
  for (Ready& item : bucket) {
    Local& local = *item.local;
    local.staging->order_after_input(stream.handle());
    const DeviceTensor& device = local.submission.device;
    parts.push_back(
        DevicePart{device.in, device.out ? device.out : device.in, descriptor_elements(local.own)});
  }
  // Average is one scaling by postscale / N, as on the host path (Horovod's rule). No member
  // has joined here, so N is the set's size whatever RINGFLOW_JOIN_AVERAGE says.
  const double factor =
      finishing_factor(request.op, request.postscale, static_cast<int64_t>(members.size()));
  auto finish = [=](void* data, size_t count, void* s) {
    cuda::scale(data, count, dtype, factor, s);
  };
  const int64_t start = Timeline::now_us();
  cuda_ipc_allreduce(ctx, *peers, parts, dtype, request.op, request.prescale, finish, stream);
  const int64_t end = Timeline::now_us();
  for (const Ready& item : bucket) trace(item, "CUDA_IPC_ALLREDUCE", start, end);
  return true;
}

}  // namespace rf
