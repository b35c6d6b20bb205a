// Pipelined ring reduce-scatter that leaves block r on rank r. In step s, rank r receives the
// partial sum of block (r - s - 2) from its left, folds in its own input and forwards it to
// its right segment by segment; after N - 1 steps block r has visited every rank and ends,
// complete, in `out`. Partial sums live in a scratch buffer because they must stay put until
// their send completes.
//
// Float order: block c is accumulated as x_{c+1} + x_{c+2} + … + x_{c+N} (ranks mod N).
#include <algorithm>
#include <cstring>

#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/segments.h"
#include "ringflow/common/scratch_buffer.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

namespace {
constexpr size_t kScratchSlots = 4;
}

void ring_reduce_scatter(const CollectiveContext& ctx, const void* in, void* out,
                         const std::vector<size_t>& block_counts, DType dtype, ReduceOp op) {
  const int size = ctx.size();
  const int rank = ctx.rank();
  const size_t elem = dtype_size(dtype);
  const std::vector<size_t> offsets = block_offsets(block_counts);
  if (size == 1) {
    std::memcpy(out, in, block_counts[0] * elem);
    return;
  }
  Transport& transport = ctx.transport;
  const size_t largest = *std::max_element(block_counts.begin(), block_counts.end());
  const size_t per_segment = std::max<size_t>(1, std::min(segment_elements(elem), largest));
  auto wrap = [size](int index) { return ((index % size) + size) % size; };
  auto at = [elem](const void* base, size_t element) {
    return static_cast<char*>(const_cast<void*>(base)) + element * elem;
  };
  const int right = (rank + 1) % size;
  const int left = (rank + size - 1) % size;
  ScratchBuffer partial(offsets[size] * elem);  // partial sums, indexed like the input
  ScratchBuffer slots(kScratchSlots * per_segment * elem);
  auto slot = [&](size_t j) { return slots.data() + (j % kScratchSlots) * per_segment * elem; };

  const int first = wrap(rank - 1);
  const Segments start{offsets[first], block_counts[first], per_segment};
  for (size_t j = 0; j < start.size(); ++j) {
    transport.post_send(right, at(in, start.offset(j)), start.length(j) * elem, ctx.tag);
  }
  for (int step = 0; step < size - 1; ++step) {
    const int block = wrap(rank - step - 2);
    const Segments seg{offsets[block], block_counts[block], per_segment};
    const bool last_step = step == size - 2;  // block == rank: reduce into out
    std::vector<uint64_t> tickets(seg.size());
    for (size_t j = 0; j < seg.size() && j < kScratchSlots; ++j) {
      tickets[j] = transport.post_recv(left, slot(j), seg.length(j) * elem, ctx.tag);
    }
    for (size_t j = 0; j < seg.size(); ++j) {
      transport.wait_recv(left, tickets[j], ctx.deadline);
      char* target =
          last_step ? at(out, seg.offset(j) - offsets[rank]) : at(partial.data(), seg.offset(j));
      reduce(at(in, seg.offset(j)), slot(j), target, seg.length(j), dtype, op);
      if (!last_step) transport.post_send(right, target, seg.length(j) * elem, ctx.tag);
      if (j + kScratchSlots < seg.size()) {
        tickets[j + kScratchSlots] =
            transport.post_recv(left, slot(j), seg.length(j + kScratchSlots) * elem, ctx.tag);
      }
    }
  }
  transport.wait_all(ctx.deadline);
}

}  // namespace rf
