// Dissemination barrier: in round k, rank r signals rank r + 2^k and waits for rank r - 2^k.
// After ceil(log2 N) rounds every rank has heard, directly or not, from every other.
#include "ringflow/collectives/collective.h"

namespace rf {

void dissemination_barrier(const CollectiveContext& ctx) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  for (int distance = 1; distance < size; distance <<= 1) {
    ctx.transport.post_send((rank + distance) % size, nullptr, 0, ctx.tag);
    ctx.transport.post_recv((rank - distance + size) % size, nullptr, 0, ctx.tag);
    ctx.transport.wait_all(ctx.deadline);
  }
}

}  // namespace rf
