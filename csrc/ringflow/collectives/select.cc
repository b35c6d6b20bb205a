#include "ringflow/collectives/select.h"

#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/segments.h"
#include "ringflow/common/env.h"

namespace rf {

namespace {
// Where alltoall starts reading the collective areas under auto (what the set's first rank
// sends), measured with `ringflow bench` on 2 cores (docs/performance.md).
constexpr size_t kDirectAlltoallMinBytes = 256 << 10;
}  // namespace

AllreduceAlgorithm choose_allreduce(size_t bytes, int size, bool shared_memory) {
  const EnvConfig& env = env_config();
  if (env.allreduce_algorithm == "ring" || env.allreduce_algorithm == "direct") {
    return AllreduceAlgorithm::kRing;  // direct: choose_shm_direct decides between the two
  }
  if (env.allreduce_algorithm == "bruck") return AllreduceAlgorithm::kBruck;
  // Bruck receives (N - 1) x the data in log2(N) rounds; the ring 2 (N - 1) / N x in
  // 2 (N - 1) rounds. Small messages are all latency, large ones all bandwidth, so the switch
  // is on what Bruck makes a rank receive. Measured crossovers (docs/performance.md): 64 KiB
  // at N = 2 and 16-64 KiB at N = 4 on loopback, 16 KiB at N = 4 on 1 Gbit/s links. Over
  // shared memory the ring (N = 2) and the direct algorithm win from 8-16 KiB at N = 2 and 4
  // (2 cores, `ringflow bench`: 32 KiB at N = 2 took 12.8 us by Bruck, 8.8 by the ring).
  const size_t limit = shared_memory ? env.bruck_max_bytes_shm : env.bruck_max_bytes;
  return size > 1 && bytes * static_cast<size_t>(size - 1) <= limit ? AllreduceAlgorithm::kBruck
                                                                    : AllreduceAlgorithm::kRing;
}

bool choose_shm_direct(size_t bytes, int size, bool possible) {
  const EnvConfig& env = env_config();
  if (!possible || env.allreduce_algorithm == "ring" || env.allreduce_algorithm == "bruck") {
    return false;
  }
  if (env.allreduce_algorithm == "direct") return true;
  if (env.direct_min_bytes >= 0) return bytes >= static_cast<size_t>(env.direct_min_bytes);
  // Measured (docs/performance.md, 2 cores): at N = 2 each rank reduces half either way and
  // the ring's finer pipelining keeps up until the data leaves the caches (4-16 MiB); from
  // N = 3 direct moves 5 - 2/N bytes per byte against the ring's 11 (N - 1)/N and wins at every
  // size above Bruck's, oversubscribed too.
  return size > 2 || bytes >= (size_t{8} << 20);
}

bool choose_shm_direct_allgather(int size, bool possible) {
  const std::string& choice = env_config().allgather_algorithm;
  return possible && (choice == "direct" || (choice == "auto" && size > 2));
}

bool choose_shm_direct_broadcast(int size, bool possible) {
  const std::string& choice = env_config().broadcast_algorithm;
  return possible && (choice == "direct" || (choice == "auto" && size > 2));
}

bool choose_hierarchical(const HostLayout& layout) {
  // Each host sends 2 (H - 1) / H of the data instead of at least 2 (N - 1) / N: fewer network
  // bytes at every size. Small sizes lose nothing: they gather, like the flat Bruck.
  return env_config().hierarchical != "off" && layout.uniform && layout.hosts > 1 &&
         layout.local_size > 1;
}

BroadcastAlgorithm choose_broadcast(size_t bytes, int size) {
  const EnvConfig& env = env_config();
  if (env.broadcast_algorithm == "binomial") return BroadcastAlgorithm::kBinomial;
  if (env.broadcast_algorithm == "chain") return BroadcastAlgorithm::kChain;
  // The tree sends the whole buffer log2(N) times from the root; the chain once per link.
  return size > 2 && bytes >= env.chain_min_bytes ? BroadcastAlgorithm::kChain
                                                  : BroadcastAlgorithm::kBinomial;
}

bool choose_shm_direct_reduce_scatter(size_t /*bytes*/, int /*size*/, bool possible) {
  const std::string& choice = env_config().reducescatter_algorithm;
  // Direct moves 3 - 1/N bytes per byte against the ring's 7 (N - 1)/N and waits on no ring:
  // measured (docs/performance.md, 2 cores) as fast or faster at every size from 64 B to 64 MiB,
  // N = 2 and 4, so auto takes it wherever it is possible.
  return possible && choice != "ring";
}

bool choose_shm_direct_alltoall(size_t bytes, int /*size*/, bool possible) {
  const std::string& choice = env_config().alltoall_algorithm;
  if (!possible || choice == "pairwise") return false;
  // The same bytes as pairwise exchange over the rings: direct wins on synchronisation only,
  // measured 1.0-1.3x from 256 KiB and within noise below (N = 2 and 4).
  return choice == "direct" || bytes >= kDirectAlltoallMinBytes;
}

bool reduce_scatter_gathers(const CollectiveContext& ctx, size_t bytes, double prescale) {
  // Prescale scales a packed copy; otherwise the direct algorithm, which copies its input into
  // the area piece by piece anyway, takes it from the tensors: the fusion buffer's copy is saved.
  return prescale == 1.0 &&
         choose_shm_direct_reduce_scatter(bytes, ctx.size(), shm_direct_part_bytes(ctx) > 0);
}

const char* run_reduce_scatter(const CollectiveContext& ctx, const void* in, void* out,
                               const std::vector<size_t>& block_counts, DType dtype, ReduceOp op,
                               const std::function<void(size_t, size_t, char*)>& gather) {
  size_t bytes = 0;
  for (size_t count : block_counts) bytes += count * dtype_size(dtype);
  if (gather ||
      choose_shm_direct_reduce_scatter(bytes, ctx.size(), shm_direct_part_bytes(ctx) > 0)) {
    shm_direct_reduce_scatter(ctx, in, out, block_counts, dtype, op, gather);
    return "SHM_DIRECT_REDUCESCATTER";
  }
  ring_reduce_scatter(ctx, in, out, block_counts, dtype, op);
  return "RING_REDUCESCATTER";
}

const char* run_alltoall(const CollectiveContext& ctx, size_t agreed_bytes, const void* in,
                         const std::vector<size_t>& send_bytes, void* out,
                         const std::vector<size_t>& recv_bytes) {
  if (choose_shm_direct_alltoall(agreed_bytes, ctx.size(), shm_direct_part_bytes(ctx) > 0)) {
    shm_direct_alltoall(ctx, in, send_bytes, out, recv_bytes);
    return "SHM_DIRECT_ALLTOALL";
  }
  pairwise_alltoall(ctx, in, send_bytes, out, recv_bytes);
  return "PAIRWISE_ALLTOALL";
}

size_t segment_elements(size_t elem_bytes) {
  size_t elements = env_config().segment_bytes / elem_bytes;
  return elements > 0 ? elements : 1;
}

}  // namespace rf
