// The collective algorithms: free functions over a transport. Each knows nothing about the
// engine, Python or sockets; each lives in its own file. Arguments were validated and agreed
// between ranks (negotiated) before any of these runs, so they only move and reduce bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ringflow/common/deadline.h"
#include "ringflow/common/dtype.h"
#include "ringflow/transport/transport.h"

namespace rf {

// What every collective call needs: the peers, the operation's tag (its sequence number, the
// same on every rank) and when to give up.
struct CollectiveContext {
  Transport& transport;
  uint64_t tag;
  Deadline deadline;
  int rank() const { return transport.rank(); }
  int size() const { return transport.size(); }
};

// In place: data (count elements) becomes the reduction over all ranks. Average reduces like Sum;
// the caller divides. Reduce-scatter then allgather around the ring.
void ring_allreduce(const CollectiveContext& ctx, void* data, size_t count, DType dtype,
                    ReduceOp op);

// data (bytes) is copied from root to every rank along a binomial tree.
void binomial_broadcast(const CollectiveContext& ctx, void* data, size_t bytes, int root);

// Rank r's block (block_bytes[r] bytes) is already at its place in `out`, which holds all blocks
// back to back in rank order; fills in the others around the ring.
void ring_allgatherv(const CollectiveContext& ctx, void* out,
                     const std::vector<size_t>& block_bytes);

// `work` holds the whole input (all blocks back to back, block_counts[r] elements for rank r)
// and is used as scratch; afterwards `work`'s block `rank` holds the reduction of that block.
void ring_reduce_scatter(const CollectiveContext& ctx, void* work,
                         const std::vector<size_t>& block_counts, DType dtype, ReduceOp op);

// send_bytes[p] bytes from `in` (blocks in rank order) go to rank p; recv_bytes[p] bytes from
// rank p land in `out` (blocks in rank order).
void pairwise_alltoall(const CollectiveContext& ctx, const void* in,
                       const std::vector<size_t>& send_bytes, void* out,
                       const std::vector<size_t>& recv_bytes);

// Returns once every rank has entered it.
void dissemination_barrier(const CollectiveContext& ctx);

// Byte offsets of consecutive blocks of the given sizes.
std::vector<size_t> block_offsets(const std::vector<size_t>& sizes);
// count split into `parts` blocks: count / parts each, the first count % parts get one more.
std::vector<size_t> even_blocks(size_t count, int parts);

}  // namespace rf
