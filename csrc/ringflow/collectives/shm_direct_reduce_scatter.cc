// Reduce-scatter among ranks of one host that read each other's collective areas
// (transport/shm/collective_area.h) instead of passing partial sums around the ring.
//
// Vocabulary as in shm_direct_allreduce.cc: every block (block_counts[r] elements, rank r's
// result) is cut into *pieces* of per_piece elements; piece k of a rank's slot k % kAreaSlots
// holds one *part* per other rank: that rank's block, elements [k per_piece, (k + 1) per_piece)
// of this rank's input. For piece k every rank
//   1. copies the parts of its input that the others reduce into its slot (its own block only it
//      reads: straight from `in`) and publishes kFilled,
//   2. reduces piece k of its own block from `in` and every other rank's part (waiting on their
//      kFilled), block by block in L1, straight into `out`; publishes kReduced and kCopied.
// There is no copy-out: each rank already holds what it reduced. kReduced is published all the
// same, so that every pair's three counters advance alike (collective_area.h). Filling piece
// k + 1 comes before reducing piece k; a slot is refilled once its readers have published kCopied
// for it (CollectiveAreas::wait_slot_free), so no collective ends with a barrier.
//
// Bytes through memory per byte of the input, per rank: copy in (N - 1)/N read + written, reduce
// N x 1/N read + 1/N written: 3 - 1/N in all (N = 2: 2.5, N = 4: 2.75). The ring over the
// shared-memory rings copies each of its (N - 1)/N sent bytes into and out of a ring (4 (N - 1)/N)
// and reduces (N - 1)/N reading two operands and writing one: 7 (N - 1)/N (N = 2: 3.5,
// N = 4: 5.25).
//
// Float order: block c is accumulated as ring_reduce_scatter does, x_{c+N} op (… op (x_{c+2} op
// x_{c+1})) (ranks mod N, operands as the ring passes them), whatever the pieces or N: choosing
// this algorithm or fusing never changes a bit.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/reduce/reduce.h"
#include "ringflow/transport/shm/collective_area.h"

namespace rf {

namespace {

using shm::CollectiveAreas;
constexpr size_t kFoldBlockBytes = 32 << 10;  // the partial result stays in L1 while folding

}  // namespace

size_t shm_direct_part_bytes(const CollectiveContext& ctx) {
  CollectiveAreas* areas = ctx.transport.collective_areas();
  if (!areas || ctx.size() < 2) return 0;
  std::vector<int> ranks;
  for (int r = 0; r < ctx.size(); ++r) ranks.push_back(ctx.transport.job_rank(r));
  if (!areas->covers(ranks)) return 0;
  return areas->slot_bytes(ranks) / static_cast<size_t>(ctx.size() - 1) / shm::kCacheLine *
         shm::kCacheLine;
}

void shm_direct_reduce_scatter(const CollectiveContext& ctx, const void* in, void* out,
                               const std::vector<size_t>& block_counts, DType dtype, ReduceOp op,
                               const InputGather& gather) {
  const int size = ctx.size();
  const int me = ctx.rank();
  const size_t elem = dtype_size(dtype);
  const size_t largest = *std::max_element(block_counts.begin(), block_counts.end());
  if (largest == 0) return;  // every rank sees the same counts: none publishes anything
  CollectiveAreas& areas = *ctx.transport.collective_areas();
  std::vector<int> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(ctx.transport.job_rank(r));
  const int self = ranks[me];
  const size_t part_bytes = shm_direct_part_bytes(ctx);
  const size_t per_piece = part_bytes / elem;
  const size_t pieces = (largest + per_piece - 1) / per_piece;
  const std::vector<size_t> block_at = block_offsets(block_counts);
  const char* source = static_cast<const char*>(in);
  // Input elements [first, first + n) to dst: from `in`, or straight from a fused bucket's tensors.
  auto copy_input = [&](size_t first, size_t n, char* dst) {
    if (gather) {
      gather(first * elem, n * elem, dst);
    } else {
      std::memcpy(dst, source + first * elem, n * elem);
    }
  };
  std::vector<char> own(gather ? part_bytes : 0);  // this rank's part, gathered
  // Counts for each pair before this collective: this rank's own (collective_area.h).
  std::vector<uint64_t> base(size);
  for (int r = 0; r < size; ++r) {
    base[r] = r == me ? 0 : areas.counter(self, ranks[r], shm::kCopied);
  }
  auto publish = [&](shm::AreaStage stage, size_t piece) {
    std::vector<uint64_t> values(size);
    for (int r = 0; r < size; ++r) values[r] = base[r] + piece + 1;
    areas.publish(ranks, stage, values);
  };
  // Elements of rank r's block in piece k.
  auto part = [&](int r, size_t k) {
    const size_t first = k * per_piece;
    return block_counts[r] > first ? std::min(per_piece, block_counts[r] - first) : 0;
  };
  // Where, in `owner`'s slot, the part for `reader` lies.
  auto part_at = [&](int owner, int reader) {
    return static_cast<size_t>(reader < owner ? reader : reader - 1) * part_bytes;
  };
  auto fill = [&](size_t k) {
    if (k >= pieces) return;
    const int slot_index = static_cast<int>(k % shm::kAreaSlots);
    bool any = false;
    for (int r = 0; r < size; ++r) any = any || (r != me && part(r, k) > 0);
    if (any) {
      areas.wait_slot_free(slot_index, ctx.deadline);
      char* slot = areas.slot(self, slot_index);
      std::vector<std::pair<int, uint64_t>> readers;
      for (int r = 0; r < size; ++r) {
        if (r == me) continue;
        copy_input(block_at[r] + k * per_piece, part(r, k), slot + part_at(me, r));
        readers.emplace_back(ranks[r], base[r] + k + 1);
      }
      areas.slot_filled(slot_index, std::move(readers));
    }
    publish(shm::kFilled, k);
  };

  const size_t fold_block = std::max<size_t>(1, kFoldBlockBytes / elem);
  std::vector<const char*> contributions(size);
  char* target = static_cast<char*>(out);
  fill(0);
  for (size_t k = 0; k < pieces; ++k) {
    fill(k + 1);
    const size_t n = part(me, k);
    if (n > 0) {
      const int slot_index = static_cast<int>(k % shm::kAreaSlots);
      for (int r = 0; r < size; ++r) {
        if (r == me && gather) {
          copy_input(block_at[me] + k * per_piece, n, own.data());
          contributions[r] = own.data();
        } else if (r == me) {
          contributions[r] = source + (block_at[me] + k * per_piece) * elem;
        }
        if (r == me) continue;
        areas.wait(ranks[r], shm::kFilled, base[r] + k + 1, ranks, ctx.deadline, "reducescatter");
        contributions[r] = areas.slot(ranks[r], slot_index) + part_at(r, me);
      }
      // The ring's order for block `me`: it starts at rank me + 1 and ends here.
      auto x = [&](int j) { return contributions[(me + j) % size]; };
      char* piece_out = target + k * per_piece * elem;
      for (size_t done = 0; done < n; done += fold_block) {
        const size_t len = std::min(fold_block, n - done);
        const size_t at = done * elem;
        reduce(x(2) + at, x(1) + at, piece_out + at, len, dtype, op);
        for (int j = 3; j <= size; ++j) {
          reduce(x(j) + at, piece_out + at, piece_out + at, len, dtype, op);
        }
      }
    }
    publish(shm::kReduced, k);
    publish(shm::kCopied, k);
  }
}

}  // namespace rf
