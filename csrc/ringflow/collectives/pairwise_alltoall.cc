// Pairwise-exchange alltoall: in step s (1 … N-1) rank r sends its block for rank r + s and
// receives the block from rank r - s, so every pair exchanges exactly once and no rank is
// flooded by N - 1 senders at the same time.
#include <cstring>

#include "ringflow/collectives/collective.h"

namespace rf {

void pairwise_alltoall(const CollectiveContext& ctx, const void* in,
                       const std::vector<size_t>& send_bytes, void* out,
                       const std::vector<size_t>& recv_bytes) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  const std::vector<size_t> send_offsets = block_offsets(send_bytes);
  const std::vector<size_t> recv_offsets = block_offsets(recv_bytes);
  const char* source = static_cast<const char*>(in);
  char* target = static_cast<char*>(out);
  if (send_bytes[rank] > 0) {
    std::memcpy(target + recv_offsets[rank], source + send_offsets[rank], send_bytes[rank]);
  }
  for (int step = 1; step < size; ++step) {
    const int to = (rank + step) % size;
    const int from = (rank - step + size) % size;
    ctx.transport.post_send(to, source + send_offsets[to], send_bytes[to], ctx.tag);
    ctx.transport.post_recv(from, target + recv_offsets[from], recv_bytes[from], ctx.tag);
    ctx.transport.wait_all(ctx.deadline);
  }
}

}  // namespace rf
