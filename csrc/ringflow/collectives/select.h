// The one place that chooses an algorithm: thresholds measured on a 2-core loopback machine
// (see docs/performance.md), each overridable by environment variable.
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

#include "ringflow/common/dtype.h"

namespace rf {

enum class AllreduceAlgorithm { kRing, kBruck };
struct HostLayout;
struct CollectiveContext;

enum class BroadcastAlgorithm { kBinomial, kChain };

// RINGFLOW_ALLREDUCE_ALGORITHM=auto|ring|bruck; auto picks bruck while (N - 1) x bytes, what
// it makes each rank receive, is at most RINGFLOW_BRUCK_MAX_BYTES (64 KiB).
// `shared_memory`: the set's ranks share memory (shm_direct_possible), where the ring and the
// direct algorithm overtake Bruck sooner (RINGFLOW_BRUCK_MAX_BYTES unset: 8 KiB).
AllreduceAlgorithm choose_allreduce(size_t bytes, int size, bool shared_memory = false);
// Whether an allreduce that is not Bruck's (choose_allreduce) reads its peers' memory directly
// (shm_direct_allreduce) instead of going around the ring. `possible`: shm_direct_possible.
// RINGFLOW_ALLREDUCE_ALGORITHM=direct forces it at every size where possible (Bruck and the
// inline path then never run); auto takes it from RINGFLOW_DIRECT_MIN_BYTES, whose default
// (auto) is the crossover measured for `size` ranks.
bool choose_shm_direct(size_t bytes, int size, bool possible);
// Whether an allgather (RINGFLOW_ALLGATHER_ALGORITHM=auto|ring|direct) or a broadcast
// (RINGFLOW_BROADCAST_ALGORITHM=direct) copies through the collective areas
// (shm_direct_allgatherv) instead of the ring, chain or tree. `possible`: shm_direct_possible.
// auto: from 3 ranks (at 2 every algorithm copies each byte in and out once).
bool choose_shm_direct_allgather(int size, bool possible);
bool choose_shm_direct_broadcast(int size, bool possible);
// Whether a set's allreduces run hierarchically (and reduce in hierarchical_allreduce's float
// order, whatever their size, so fusion never changes a result's bits): only on a uniform layout
// of more than one host with more than one rank each (uneven hosts keep the flat algorithms).
// RINGFLOW_HIERARCHICAL=auto|on: then, since it always sends fewer bytes out of each host;
// off: never. Small allreduces (where the flat choice is Bruck) gather every input and fold in
// that order, unless `on` forces hierarchical_allreduce at every size.
bool choose_hierarchical(const HostLayout& layout);
// RINGFLOW_BROADCAST_ALGORITHM=auto|binomial|chain; auto picks chain from RINGFLOW_CHAIN_MIN_BYTES.
BroadcastAlgorithm choose_broadcast(size_t bytes, int size);

// Whether a reducescatter of `bytes` (its whole input, alike on every rank) reads its peers'
// collective areas (shm_direct_reduce_scatter) instead of going around the ring, and whether an
// alltoall does (shm_direct_alltoall, `bytes`: what the set's first rank sends) instead of
// pairwise exchange. `possible`: shm_direct_part_bytes(ctx) > 0.
// RINGFLOW_REDUCESCATTER_ALGORITHM=auto|ring|direct, RINGFLOW_ALLTOALL_ALGORITHM=
// auto|pairwise|direct. Measured (select.cc): auto reducescatter is direct wherever possible,
// auto alltoall from 256 KiB.
bool choose_shm_direct_reduce_scatter(size_t bytes, int size, bool possible);
bool choose_shm_direct_alltoall(size_t bytes, int size, bool possible);
// Run the reducescatter (ring_reduce_scatter's arguments) or alltoall (pairwise_alltoall's) that
// the choice above picks; each returns its timeline phase.
// A fused reducescatter may leave its input unpacked (`in` not yet written) where
// reduce_scatter_gathers says so, and pass `gather` (collective.h, InputGather) instead.
bool reduce_scatter_gathers(const CollectiveContext& ctx, size_t bytes, double prescale);
const char* run_reduce_scatter(const CollectiveContext& ctx, const void* in, void* out,
                               const std::vector<size_t>& block_counts, DType dtype, ReduceOp op,
                               const std::function<void(size_t, size_t, char*)>& gather = {});
const char* run_alltoall(const CollectiveContext& ctx, size_t agreed_bytes, const void* in,
                         const std::vector<size_t>& send_bytes, void* out,
                         const std::vector<size_t>& recv_bytes);

}  // namespace rf
