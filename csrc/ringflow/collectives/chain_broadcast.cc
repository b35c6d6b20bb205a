// Pipelined chain broadcast for large buffers: ranks form a chain starting at the root
// (virtual rank v = r - root); each receives a segment from v - 1 and forwards it to v + 1 at
// once, so every link carries the data exactly once and all links work at the same time.
#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/segments.h"

namespace rf {

void chain_broadcast(const CollectiveContext& ctx, void* data, size_t bytes, int root) {
  const int size = ctx.size();
  if (size == 1 || bytes == 0) return;
  Transport& transport = ctx.transport;
  const int virtual_rank = (ctx.rank() - root + size) % size;
  const int previous = (ctx.rank() - 1 + size) % size;
  const int next = (ctx.rank() + 1) % size;
  const bool forwards = virtual_rank + 1 < size;
  const Segments seg{0, bytes, segment_elements(1)};
  char* base = static_cast<char*>(data);
  if (virtual_rank == 0) {
    for (size_t j = 0; j < seg.size(); ++j) {
      transport.post_send(next, base + seg.offset(j), seg.length(j), ctx.tag);
    }
  } else {
    std::vector<uint64_t> tickets(seg.size());
    for (size_t j = 0; j < seg.size(); ++j) {
      tickets[j] = transport.post_recv(previous, base + seg.offset(j), seg.length(j), ctx.tag);
    }
    for (size_t j = 0; j < seg.size(); ++j) {
      transport.wait_recv(previous, tickets[j], ctx.deadline);
      if (forwards) transport.post_send(next, base + seg.offset(j), seg.length(j), ctx.tag);
    }
  }
  transport.wait_all(ctx.deadline);
}

}  // namespace rf
