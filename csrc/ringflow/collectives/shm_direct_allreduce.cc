// Allreduce among ranks of one host that read each other's memory (the collective areas of
// transport/shm/collective_area.h) instead of passing segments around a ring.
//
// Vocabulary: the buffer is cut into *pieces* of one area slot each; each piece into one
// *slice* per rank (even_blocks). For piece k, in slot k % kAreaSlots, every rank
//   1. copies its input piece into its own slot and publishes kFilled,
//   2. reduces its slice from every rank's slot (waiting on their kFilled) into `out`, copies
//      the result back over its own slice of its slot (only it reads that slice of its input)
//      and publishes kReduced,
//   3. copies every other rank's reduced slice into `out` (waiting on their kReduced) and
//      publishes kCopied: it is done with piece k in every slot.
// No rank waits for a global barrier: only for the counters of the data it reads. Copying in
// piece k + 1 comes right after step 2, before step 3 of piece k, so a slow rank finds its
// peers' next inputs ready. Its slot held piece k + 1 - kAreaSlots = k - 2; every peer finished
// that (kCopied) before it copied in piece k, which this rank saw (kFilled of piece k), so with
// three slots that copy never waits. At the end each rank waits for everyone's kCopied of the
// last piece: then its slots are free for whichever collective comes next.
//
// Bytes through memory per byte of the buffer, per rank: read 3 and write 2 + 1/N (copy in
// 1 + 1, reduce 1 + 1/N, slice back 1/N + 1/N, copy out (N - 1)/N + (N - 1)/N); the ring over
// the shared-memory rings moves ~2 (N - 1)/N x (two copies each way) plus its reductions.
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

// Folds elements [first, first + n) (of the whole buffer, inside one chunk c) in ring order from
// contributions[r] (each rank's copy of the piece, starting at element `piece_first`).
void fold(const std::vector<const char*>& contributions, size_t piece_first, size_t first,
          size_t n, int chunk, char* target, DType dtype, ReduceOp op) {
  const int size = static_cast<int>(contributions.size());
  const size_t elem = dtype_size(dtype);
  const size_t block = std::max<size_t>(1, kFoldBlockBytes / elem);
  for (size_t done = 0; done < n; done += block) {
    const size_t len = std::min(block, n - done);
    const size_t at = (first - piece_first + done) * elem;
    char* into = target + (first + done) * elem;
    std::memcpy(into, contributions[chunk] + at, len * elem);
    for (int k = 1; k < size; ++k) {
      reduce(contributions[(chunk + k) % size] + at, into, into, len, dtype, op);
    }
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
    if (k >= shm::kAreaSlots) {
      for (int r = 0; r < size; ++r) wait_for(r, shm::kCopied, k - shm::kAreaSlots, "allreduce");
    }
    std::memcpy(areas.slot(self, static_cast<int>(k % shm::kAreaSlots)),
                static_cast<const char*>(in) + piece_first(k) * elem, piece_count(k) * elem);
    publish(shm::kFilled, k);
  };

  char* target = static_cast<char*>(out);
  copy_in(0);
  for (size_t k = 0; k < pieces; ++k) {
    const int slot = static_cast<int>(k % shm::kAreaSlots);
    const size_t first = piece_first(k);
    const std::vector<size_t> slices = block_offsets(even_blocks(piece_count(k), size));
    std::vector<const char*> contributions(size);
    for (int r = 0; r < size; ++r) {
      wait_for(r, shm::kFilled, k, "allreduce (input)");
      contributions[r] = areas.slot(ranks[r], slot);
    }
    // This rank's slice, cut where the ring's chunks change.
    const size_t slice_end = first + slices[me + 1];
    for (size_t at = first + slices[me]; at < slice_end;) {
      const int chunk = static_cast<int>(
          std::upper_bound(chunk_at.begin(), chunk_at.end(), at) - chunk_at.begin() - 1);
      const size_t n = std::min(slice_end, chunk_at[chunk + 1]) - at;
      fold(contributions, first, at, n, chunk, target, dtype, op);
      at += n;
    }
    const size_t mine = slices[me + 1] - slices[me];
    if (finish && mine > 0) finish(target + (first + slices[me]) * elem, mine);
    std::memcpy(areas.slot(self, slot) + slices[me] * elem, target + (first + slices[me]) * elem,
                mine * elem);
    publish(shm::kReduced, k);
    copy_in(k + 1);
    for (int r = 0; r < size; ++r) {
      if (r == me) continue;
      wait_for(r, shm::kReduced, k, "allreduce (reduced slice)");
      std::memcpy(target + (first + slices[r]) * elem, contributions[r] + slices[r] * elem,
                  (slices[r + 1] - slices[r]) * elem);
    }
    publish(shm::kCopied, k);
  }
  for (int r = 0; r < size; ++r) wait_for(r, shm::kCopied, pieces - 1, "allreduce (finish)");
}

}  // namespace rf
