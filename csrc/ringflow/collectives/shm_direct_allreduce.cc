// Allreduce among ranks of one host that read each other's memory (the collective areas of
// transport/shm/collective_area.h) instead of passing segments around a ring.
//
// Vocabulary: the buffer is cut into *pieces* of one area slot each; each piece into one
// *slice* per rank (even_blocks). For piece k, in slot k % kAreaSlots, every rank
//   1. copies the other ranks' slices of its input piece into its own slot (its own slice only
//      it reads: straight from `in`) and publishes kFilled,
//   2. reduces its slice from `in` and every other rank's slot (waiting on their kFilled),
//      block by block in L1, into `out` and over its own slice of its slot; publishes kReduced,
//   3. copies every other rank's reduced slice into `out` (waiting on their kReduced) and
//      publishes kCopied: it reads nothing of piece k any more.
// No rank waits for a barrier, only for the counters of the data it reads. Copying in piece
// k + 1 comes right after step 2, before step 3 of piece k, so a slow rank finds its peers' next
// inputs ready. A slot is filled again only once every rank that read it has published kCopied
// for it (CollectiveAreas::wait_slot_free): within one allreduce, with three slots, that wait
// never blocks (slot (k + 1) % 3 held piece k - 2, which every peer finished before it filled
// piece k); across allreduces it replaces a barrier at the end.
//
// Bytes through memory per byte of the buffer, per rank: copy in (N - 1)/N read + written,
// reduce 1 read + 2/N written, copy out (N - 1)/N read + written: 3 - 2/N read and 2 written,
// 5 - 2/N in all (N = 2: 4, N = 4: 4.5). The ring over the shared-memory rings copies
// each of its 2 (N - 1)/N sent bytes into and out of a ring, and reduces (N - 1)/N: about
// 4 x 2 (N - 1)/N + 3 (N - 1)/N = 5.5 (N = 2) and 8.25 (N = 4).
//
// Float order: element i of chunk c (the ring's chunks: chunk_counts, or even_blocks(count, N))
// is reduced as x_{c+N-1} op (… op (x_{c+1} op x_c)), as ring_allreduce and bruck_allreduce
// do, whatever the pieces, slices or N: the algorithm choice and fusion never change a bit.
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

std::vector<int> job_ranks(const CollectiveContext& ctx) {
  std::vector<int> ranks;
  for (int r = 0; r < ctx.size(); ++r) ranks.push_back(ctx.transport.job_rank(r));
  return ranks;
}

// Folds elements [first, first + n) of the buffer (inside chunk c) in ring order, block by block
// in `scratch` (stays in L1), finishes each block and writes it to `out` and to `shared` (this
// rank's slot). contributions[r] points at rank r's copy of element `first`.
void fold(const std::vector<const char*>& contributions, size_t n, int chunk, DType dtype,
          ReduceOp op, const ChunkFinisher& finish, char* scratch, char* out, char* shared) {
  const int size = static_cast<int>(contributions.size());
  const size_t elem = dtype_size(dtype);
  const size_t block = std::max<size_t>(1, kFoldBlockBytes / elem);
  for (size_t done = 0; done < n; done += block) {
    const size_t len = std::min(block, n - done);
    const size_t at = done * elem;
    // x_{c+1} op x_c, then each further rank: the ring's order, operands as it passes them.
    reduce(contributions[(chunk + 1) % size] + at, contributions[chunk] + at, scratch, len, dtype,
           op);
    for (int k = 2; k < size; ++k) {
      reduce(contributions[(chunk + k) % size] + at, scratch, scratch, len, dtype, op);
    }
    if (finish) finish(scratch, len);
    // After every read of this block: `out` may be the input (in place).
    std::memcpy(out + at, scratch, len * elem);
    std::memcpy(shared + at, scratch, len * elem);
  }
}

}  // namespace

bool shm_direct_possible(const CollectiveContext& ctx) {
  CollectiveAreas* areas = ctx.transport.collective_areas();
  if (!areas || ctx.size() < 2) return false;
  const std::vector<int> ranks = job_ranks(ctx);
  return areas->covers(ranks) && areas->slot_bytes(ranks) >= 64;
}

void shm_direct_allreduce(const CollectiveContext& ctx, const void* in, void* out, size_t count,
                          DType dtype, ReduceOp op, const ChunkFinisher& finish,
                          const std::vector<size_t>& chunk_counts) {
  const int size = ctx.size();
  const int me = ctx.rank();
  const size_t elem = dtype_size(dtype);
  if (count == 0) return;
  CollectiveAreas& areas = *ctx.transport.collective_areas();
  const std::vector<int> ranks = job_ranks(ctx);
  const int self = ranks[me];
  const std::vector<size_t> chunks = chunk_counts.empty() ? even_blocks(count, size) : chunk_counts;
  const std::vector<size_t> chunk_at = block_offsets(chunks);
  const size_t per_piece = areas.slot_bytes(ranks) / elem;
  const size_t pieces = (count + per_piece - 1) / per_piece;
  // Counts for this pair before this collective: this rank's own counters (see the header).
  std::vector<uint64_t> base(size);
  for (int r = 0; r < size; ++r) {
    base[r] = r == me ? 0 : areas.counter(self, ranks[r], shm::kCopied);
  }
  auto publish = [&](shm::AreaStage stage, size_t piece) {
    std::vector<uint64_t> values(size);
    for (int r = 0; r < size; ++r) values[r] = base[r] + piece + 1;
    areas.publish(ranks, stage, values);
  };
  auto wait_for = [&](int r, shm::AreaStage stage, size_t piece, const char* what) {
    if (r != me) areas.wait(ranks[r], stage, base[r] + piece + 1, ranks, ctx.deadline, what);
  };
  auto piece_first = [&](size_t k) { return k * per_piece; };
  auto piece_count = [&](size_t k) { return std::min(per_piece, count - k * per_piece); };
  auto copy_in = [&](size_t k) {
    if (k >= pieces) return;
    const int slot_index = static_cast<int>(k % shm::kAreaSlots);
    areas.wait_slot_free(slot_index, ctx.deadline);
    // Only this rank reads its own slice: it folds that straight from `in`.
    const std::vector<size_t> slices = block_offsets(even_blocks(piece_count(k), size));
    char* slot = areas.slot(self, slot_index);
    const char* from = static_cast<const char*>(in) + piece_first(k) * elem;
    std::memcpy(slot, from, slices[me] * elem);
    std::memcpy(slot + slices[me + 1] * elem, from + slices[me + 1] * elem,
                (slices[size] - slices[me + 1]) * elem);
    std::vector<std::pair<int, uint64_t>> readers;
    for (int r = 0; r < size; ++r) {
      if (r != me) readers.emplace_back(ranks[r], base[r] + k + 1);
    }
    areas.slot_filled(slot_index, std::move(readers));
    publish(shm::kFilled, k);
  };

  char* target = static_cast<char*>(out);
  std::vector<char> scratch(kFoldBlockBytes + elem);
  copy_in(0);
  for (size_t k = 0; k < pieces; ++k) {
    const int slot = static_cast<int>(k % shm::kAreaSlots);
    const size_t first = piece_first(k);
    const std::vector<size_t> slices = block_offsets(even_blocks(piece_count(k), size));
    std::vector<char*> slots(size);
    for (int r = 0; r < size; ++r) {
      wait_for(r, shm::kFilled, k, "allreduce (input)");
      slots[r] = areas.slot(ranks[r], slot);
    }
    // This rank's slice, cut where the ring's chunks change.
    const size_t slice_end = first + slices[me + 1];
    std::vector<const char*> contributions(size);
    for (size_t at = first + slices[me]; at < slice_end;) {
      const int chunk = static_cast<int>(std::upper_bound(chunk_at.begin(), chunk_at.end(), at) -
                                         chunk_at.begin() - 1);
      const size_t n = std::min(slice_end, chunk_at[chunk + 1]) - at;
      for (int r = 0; r < size; ++r) {
        contributions[r] =
            r == me ? static_cast<const char*>(in) + at * elem : slots[r] + (at - first) * elem;
      }
      fold(contributions, n, chunk, dtype, op, finish, scratch.data(), target + at * elem,
           slots[me] + (at - first) * elem);
      at += n;
    }
    publish(shm::kReduced, k);
    copy_in(k + 1);
    for (int r = 0; r < size; ++r) {
      if (r == me) continue;
      wait_for(r, shm::kReduced, k, "allreduce (reduced slice)");
      std::memcpy(target + (first + slices[r]) * elem, slots[r] + slices[r] * elem,
                  (slices[r + 1] - slices[r]) * elem);
    }
    publish(shm::kCopied, k);
  }
}

}  // namespace rf
