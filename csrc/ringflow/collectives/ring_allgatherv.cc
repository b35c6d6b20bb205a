// Pipelined ring allgather with per-rank block sizes. In step s, rank r receives block
// (r - s - 1) from its left neighbour straight into its final place and forwards each segment
// to its right as soon as it has arrived, so a block streams around the ring.
#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/segments.h"

namespace rf {

void ring_allgatherv(const CollectiveContext& ctx, void* out,
                     const std::vector<size_t>& block_bytes) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  if (size == 1) return;
  Transport& transport = ctx.transport;
  const std::vector<size_t> offsets = block_offsets(block_bytes);
  const size_t per_segment = segment_elements(1);
  char* base = static_cast<char*>(out);
  auto wrap = [size](int index) { return ((index % size) + size) % size; };
  const int right = (rank + 1) % size;
  const int left = (rank + size - 1) % size;

  const Segments own{offsets[rank], block_bytes[rank], per_segment};
  for (size_t j = 0; j < own.size(); ++j) {
    transport.post_send(right, base + own.offset(j), own.length(j), ctx.tag);
  }
  for (int step = 0; step < size - 1; ++step) {
    const int block = wrap(rank - step - 1);
    const Segments seg{offsets[block], block_bytes[block], per_segment};
    std::vector<uint64_t> tickets(seg.size());
    for (size_t j = 0; j < seg.size(); ++j) {
      tickets[j] = transport.post_recv(left, base + seg.offset(j), seg.length(j), ctx.tag);
    }
    for (size_t j = 0; j < seg.size(); ++j) {
      transport.wait_recv(left, tickets[j], ctx.deadline);
      if (step < size - 2) transport.post_send(right, base + seg.offset(j), seg.length(j), ctx.tag);
    }
  }
  transport.wait_all(ctx.deadline);
}

}  // namespace rf
