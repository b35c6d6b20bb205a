// Ring allgather with per-rank block sizes. In step s, rank r forwards block (r - s) to its
// right neighbour and receives block (r - s - 1) from its left, straight into its final place.
#include "ringflow/collectives/collective.h"

namespace rf {

void ring_allgatherv(const CollectiveContext& ctx, void* out,
                     const std::vector<size_t>& block_bytes) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  if (size == 1) return;
  const std::vector<size_t> offsets = block_offsets(block_bytes);
  auto block = [&](int index) { return static_cast<char*>(out) + offsets[index]; };
  auto wrap = [size](int index) { return ((index % size) + size) % size; };
  const int right = (rank + 1) % size;
  const int left = (rank + size - 1) % size;
  for (int step = 0; step < size - 1; ++step) {
    const int send_block = wrap(rank - step);
    const int recv_block = wrap(rank - step - 1);
    ctx.transport.post_send(right, block(send_block), block_bytes[send_block], ctx.tag);
    ctx.transport.post_recv(left, block(recv_block), block_bytes[recv_block], ctx.tag);
    ctx.transport.wait_all(ctx.deadline);
  }
}

}  // namespace rf
