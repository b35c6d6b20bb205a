// Pipelined ring allreduce = ring reduce-scatter + ring allgather.
//
// Vocabulary: the count is cut into one *chunk* per rank, each chunk into *segments*
// (RINGFLOW_SEGMENT_BYTES). In reduce-scatter step s, rank r receives chunk (r - s - 1) from
// its left neighbour, folds it into its own input and forwards the partial sum to its right;
// after N - 1 steps it holds chunk (r + 1) complete. The allgather then passes finished chunks
// around the ring. Each rank sends 2 (N - 1) / N of the data: the bandwidth lower bound.
//
// Pipelining: every segment is forwarded as soon as it is reduced, so reducing segment k
// overlaps receiving k + 1 and sending k - 1, across step boundaries and into the allgather.
// Received segments land in a few scratch slots and are reduced straight from `in` into
// `out`: out of place costs no extra copy of the tensor.
//
// Float order: chunk c is accumulated as x_{c+N-1} + (… + (x_{c+1} + x_c)) (ranks mod N), the
// same order bruck_allreduce folds in, so the algorithm choice never changes a result's bits.
// Callers may pick the chunk boundaries (fusion keeps each tensor's elements in the chunk they
// would have alone, so fused and unfused results are identical too).
#include <algorithm>
#include <cstring>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/segments.h"
#include "ringflow/common/scratch_buffer.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

namespace {
constexpr size_t kScratchSlots = 4;  // received segments waiting to be reduced
constexpr uint64_t kNoTicket = ~uint64_t{0};
}  // namespace

void ring_allreduce(const CollectiveContext& ctx, const void* in, void* out, size_t count,
                    DType dtype, ReduceOp op, const ChunkFinisher& finish,
                    const std::vector<size_t>& chunk_counts) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  const size_t elem = dtype_size(dtype);
  if (count == 0) return;
  if (size == 1) {
    if (in != out) std::memcpy(out, in, count * elem);
    if (finish) finish(out, count);
    return;
  }
  Transport& transport = ctx.transport;
  const std::vector<size_t> chunks = chunk_counts.empty() ? even_blocks(count, size) : chunk_counts;
  const std::vector<size_t> offsets = block_offsets(chunks);
  const size_t largest = *std::max_element(chunks.begin(), chunks.end());
  const size_t per_segment = std::min(segment_elements(elem), largest);
  auto segments = [&](int chunk) { return Segments{offsets[chunk], chunks[chunk], per_segment}; };
  auto wrap = [size](int index) { return ((index % size) + size) % size; };
  auto at = [elem](const void* base, size_t element) {
    return static_cast<char*>(const_cast<void*>(base)) + element * elem;
  };
  const int right = (rank + 1) % size;
  const int left = (rank + size - 1) % size;
  ScratchBuffer scratch(kScratchSlots * per_segment * elem);
  auto slot = [&](size_t j) { return scratch.data() + (j % kScratchSlots) * per_segment * elem; };
  // The last send out of each chunk of `out`: the allgather must not overwrite it before then.
  std::vector<uint64_t> last_send(size, kNoTicket);

  const Segments own = segments(rank);
  for (size_t j = 0; j < own.size(); ++j) {
    uint64_t ticket =
        transport.post_send(right, at(in, own.offset(j)), own.length(j) * elem, ctx.tag);
    if (in == out) last_send[rank] = ticket;
  }
  for (int step = 0; step < size - 1; ++step) {
    const int chunk = wrap(rank - step - 1);
    const Segments seg = segments(chunk);
    const bool last_step = step == size - 2;
    std::vector<uint64_t> tickets(seg.size());
    for (size_t j = 0; j < seg.size() && j < kScratchSlots; ++j) {
      tickets[j] = transport.post_recv(left, slot(j), seg.length(j) * elem, ctx.tag);
    }
    for (size_t j = 0; j < seg.size(); ++j) {
      transport.wait_recv(left, tickets[j], ctx.deadline);
      char* target = at(out, seg.offset(j));
      reduce(at(in, seg.offset(j)), slot(j), target, seg.length(j), dtype, op);
      if (last_step && finish) finish(target, seg.length(j));
      // The next reduce-scatter step's send — or, after the last, the allgather's first.
      last_send[chunk] = transport.post_send(right, target, seg.length(j) * elem, ctx.tag);
      if (j + kScratchSlots < seg.size()) {
        tickets[j + kScratchSlots] =
            transport.post_recv(left, slot(j), seg.length(j + kScratchSlots) * elem, ctx.tag);
      }
    }
  }
  for (int step = 0; step < size - 1; ++step) {
    const int chunk = wrap(rank - step);
    const Segments seg = segments(chunk);
    if (last_send[chunk] != kNoTicket) transport.wait_send(right, last_send[chunk], ctx.deadline);
    std::vector<uint64_t> tickets(seg.size());
    for (size_t j = 0; j < seg.size(); ++j) {
      tickets[j] = transport.post_recv(left, at(out, seg.offset(j)), seg.length(j) * elem, ctx.tag);
    }
    for (size_t j = 0; j < seg.size(); ++j) {
      transport.wait_recv(left, tickets[j], ctx.deadline);
      if (step < size - 2) {
        transport.post_send(right, at(out, seg.offset(j)), seg.length(j) * elem, ctx.tag);
      }
    }
  }
  transport.wait_all(ctx.deadline);
}

}  // namespace rf
