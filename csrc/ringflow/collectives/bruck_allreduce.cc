// Small allreduce in ceil(log2 N) steps: a Bruck allgather of every rank's whole input, then
// each rank folds every chunk itself. The fold follows ring_allreduce's order for that chunk —
// x_{c+N-1} op (… op (x_{c+1} op x_c)) — so switching algorithm at a size threshold, or
// fusing tensors, never changes a single bit of a result.
#include <cstring>

#include "ringflow/collectives/collective.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

void bruck_allreduce(const CollectiveContext& ctx, const void* in, void* out, size_t count,
                     DType dtype, ReduceOp op, const ChunkFinisher& finish,
                     const std::vector<size_t>& chunk_counts) {
  const int size = ctx.size();
  const size_t elem = dtype_size(dtype);
  if (count == 0) return;
  if (size == 1) {
    if (in != out) std::memcpy(out, in, count * elem);
    if (finish) finish(out, count);
    return;
  }
  GatherBlock mine;
  mine.payload = static_cast<const char*>(in);
  mine.payload_bytes = count * elem;
  GatheredBlocks all;
  // Every rank's payload has the agreed size: no header needed.
  bruck_allgather(ctx, mine, [&](const char*) { return count * elem; }, &all);

  std::vector<const char*> contributions;
  for (const auto& payload : all.payloads) contributions.push_back(payload.data());
  fold_in_ring_order(contributions, out, count, dtype, op, chunk_counts);
  if (finish) finish(out, count);
}

void fold_in_ring_order(const std::vector<const char*>& contributions, void* out, size_t count,
                        DType dtype, ReduceOp op, const std::vector<size_t>& chunk_counts) {
  const int size = static_cast<int>(contributions.size());
  const size_t elem = dtype_size(dtype);
  // Even blocks (the first count % size one element longer) are computed, not allocated: the
  // inline allreduce of every small call folds here.
  const bool even = chunk_counts.empty();
  const size_t base = count / size;
  const size_t longer = count % size;
  char* target = static_cast<char*>(out);
  size_t offset = 0;
  for (int c = 0; c < size; ++c) {
    const size_t chunk = even ? base + (static_cast<size_t>(c) < longer ? 1 : 0) : chunk_counts[c];
    const size_t first = offset * elem;
    offset += chunk;
    if (chunk == 0) continue;
    std::memcpy(target + first, contributions[c] + first, chunk * elem);
    for (int k = 1; k < size; ++k) {
      const char* contribution = contributions[(c + k) % size] + first;
      reduce(contribution, target + first, target + first, chunk, dtype, op);
    }
  }
}

}  // namespace rf
