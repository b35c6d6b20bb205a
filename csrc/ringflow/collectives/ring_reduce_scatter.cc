// Ring reduce-scatter that leaves block r on rank r. In step s, rank r sends block (r - s - 1)
// to its right neighbour and folds block (r - s - 2), arriving from its left, into its copy;
// after N - 1 steps block r has visited every rank and ends complete on rank r.
//
// Float order: block c is accumulated as x_{c+1} + x_{c+2} + … + x_{c+N} (ranks mod N).
#include <algorithm>

#include "ringflow/collectives/collective.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

void ring_reduce_scatter(const CollectiveContext& ctx, void* work,
                         const std::vector<size_t>& block_counts, DType dtype, ReduceOp op) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  if (size == 1) return;
  const size_t elem = dtype_size(dtype);
  const std::vector<size_t> offsets = block_offsets(block_counts);
  auto block = [&](int index) { return static_cast<char*>(work) + offsets[index] * elem; };
  auto wrap = [size](int index) { return ((index % size) + size) % size; };
  const int right = (rank + 1) % size;
  const int left = (rank + size - 1) % size;
  std::vector<char> incoming(*std::max_element(block_counts.begin(), block_counts.end()) * elem);
  for (int step = 0; step < size - 1; ++step) {
    const int send_block = wrap(rank - step - 1);
    const int recv_block = wrap(rank - step - 2);
    ctx.transport.post_send(right, block(send_block), block_counts[send_block] * elem, ctx.tag);
    ctx.transport.post_recv(left, incoming.data(), block_counts[recv_block] * elem, ctx.tag);
    ctx.transport.wait_all(ctx.deadline);
    reduce_into(block(recv_block), incoming.data(), block_counts[recv_block], dtype, op);
  }
}

}  // namespace rf
