// Ring allreduce = ring reduce-scatter + ring allgather. The count is cut into one chunk per
// rank. In step s of the reduce-scatter, rank r sends chunk (r - s) to its right neighbour and
// folds chunk (r - s - 1), arriving from its left, into its own copy; after N - 1 steps it
// holds chunk (r + 1) fully reduced. The allgather then passes the finished chunks around.
// Each rank sends 2 (N - 1) / N of the data: the bandwidth lower bound.
//
// Float order: chunk c is accumulated as x_c + x_{c+1} + … + x_{c+N-1} (ranks mod N), left to
// right; 16-bit floats are rounded to their type after every addition.
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

void ring_allreduce(const CollectiveContext& ctx, void* data, size_t count, DType dtype,
                    ReduceOp op) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  if (size == 1 || count == 0) return;
  const size_t elem = dtype_size(dtype);
  const std::vector<size_t> chunks = even_blocks(count, size);
  const std::vector<size_t> offsets = block_offsets(chunks);
  const int right = (rank + 1) % size;
  const int left = (rank + size - 1) % size;
  auto chunk_ptr = [&](int chunk) { return static_cast<char*>(data) + offsets[chunk] * elem; };
  auto wrap = [size](int index) { return ((index % size) + size) % size; };
  std::vector<char> incoming(chunks[0] * elem);  // chunk 0 is the largest

  for (int step = 0; step < size - 1; ++step) {
    const int send_chunk = wrap(rank - step);
    const int recv_chunk = wrap(rank - step - 1);
    ctx.transport.post_send(right, chunk_ptr(send_chunk), chunks[send_chunk] * elem, ctx.tag);
    ctx.transport.post_recv(left, incoming.data(), chunks[recv_chunk] * elem, ctx.tag);
    ctx.transport.wait_all(ctx.deadline);
    // local (op) incoming equals incoming (op) local bit for bit: + and * are commutative.
    reduce_into(chunk_ptr(recv_chunk), incoming.data(), chunks[recv_chunk], dtype, op);
  }
  for (int step = 0; step < size - 1; ++step) {
    const int send_chunk = wrap(rank + 1 - step);
    const int recv_chunk = wrap(rank - step);
    ctx.transport.post_send(right, chunk_ptr(send_chunk), chunks[send_chunk] * elem, ctx.tag);
    ctx.transport.post_recv(left, chunk_ptr(recv_chunk), chunks[recv_chunk] * elem, ctx.tag);
    ctx.transport.wait_all(ctx.deadline);
  }
}

}  // namespace rf
