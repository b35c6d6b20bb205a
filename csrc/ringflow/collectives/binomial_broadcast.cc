// Binomial-tree broadcast. Ranks are renumbered so the root is 0 ("virtual rank"); a rank
// receives once from the virtual rank that differs in its lowest set bit, then forwards to
// virtual ranks + 2^k for every k below that bit. log2(N) rounds.
#include "ringflow/collectives/collective.h"

namespace rf {

void binomial_broadcast(const CollectiveContext& ctx, void* data, size_t bytes, int root) {
  const int size = ctx.size();
  if (size == 1) return;
  const int virtual_rank = (ctx.rank() - root + size) % size;
  auto real_rank = [&](int v) { return (v + root) % size; };

  int mask = 1;
  while (mask < size) {
    if (virtual_rank & mask) {
      ctx.transport.post_recv(real_rank(virtual_rank - mask), data, bytes, ctx.tag);
      ctx.transport.wait_all(ctx.deadline);
      break;
    }
    mask <<= 1;
  }
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (virtual_rank + mask < size) {
      ctx.transport.post_send(real_rank(virtual_rank + mask), data, bytes, ctx.tag);
    }
  }
  ctx.transport.wait_all(ctx.deadline);
}

}  // namespace rf
