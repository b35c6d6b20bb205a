// Allgatherv among ranks of one host that read each other's collective areas
// (transport/shm/collective_area.h); broadcast is the case where only the root has a block.
//
// Each rank's block is cut into *pieces* of one area slot (a shorter block has fewer). For
// piece k every rank copies piece k of its block into its slot k % kAreaSlots and publishes
// kFilled, then copies piece k of every other rank's block out of that rank's slot once its
// kFilled says so, and publishes kCopied. kReduced is published too (nothing is reduced), so
// that every pair's three counters advance alike in every collective on the areas. Filling
// piece k + 1 comes before copying piece k out; a slot is refilled once its readers have
// published kCopied for it (CollectiveAreas::wait_slot_free).
//
// Bytes through memory per byte gathered, per rank: 2/N to fill (read + write its block), 2 (N -
// 1)/N to copy the others out: 2 in all, against the ring's 4 (N - 1)/N over the shared-memory
// rings (each block crosses N - 1 rings, one copy in and one out each). A broadcast moves 2 per
// byte on every rank, the chain 4 on every rank but the root and the last.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/transport/shm/collective_area.h"

namespace rf {

void shm_direct_allgatherv(const CollectiveContext& ctx, void* out,
                           const std::vector<size_t>& block_bytes) {
  const int size = ctx.size();
  const int me = ctx.rank();
  const size_t largest = *std::max_element(block_bytes.begin(), block_bytes.end());
  if (size == 1 || largest == 0) return;
  shm::CollectiveAreas& areas = *ctx.transport.collective_areas();
  std::vector<int> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(ctx.transport.job_rank(r));
  const int self = ranks[me];
  const size_t per_piece = areas.slot_bytes(ranks);
  const size_t pieces = (largest + per_piece - 1) / per_piece;
  const std::vector<size_t> block_at = block_offsets(block_bytes);
  char* base = static_cast<char*>(out);
  // Counts for each pair before this collective: this rank's own (collective_area.h).
  std::vector<uint64_t> before(size);
  for (int r = 0; r < size; ++r) {
    before[r] = r == me ? 0 : areas.counter(self, ranks[r], shm::kCopied);
  }
  auto publish = [&](shm::AreaStage stage, size_t piece) {
    std::vector<uint64_t> values(size);
    for (int r = 0; r < size; ++r) values[r] = before[r] + piece + 1;
    areas.publish(ranks, stage, values);
  };
  // Bytes of rank r's piece k.
  auto piece_bytes = [&](int r, size_t k) {
    const size_t first = k * per_piece;
    return block_bytes[r] > first ? std::min(per_piece, block_bytes[r] - first) : 0;
  };
  auto fill = [&](size_t k) {
    if (k >= pieces) return;
    const int slot = static_cast<int>(k % shm::kAreaSlots);
    if (piece_bytes(me, k) > 0) {
      areas.wait_slot_free(slot, ctx.deadline);
      std::memcpy(areas.slot(self, slot), base + block_at[me] + k * per_piece, piece_bytes(me, k));
      std::vector<std::pair<int, uint64_t>> readers;
      for (int r = 0; r < size; ++r) {
        if (r != me) readers.emplace_back(ranks[r], before[r] + k + 1);
      }
      areas.slot_filled(slot, std::move(readers));
    }
    publish(shm::kFilled, k);
    publish(shm::kReduced, k);
  };

  fill(0);
  for (size_t k = 0; k < pieces; ++k) {
    fill(k + 1);
    const int slot = static_cast<int>(k % shm::kAreaSlots);
    for (int r = 0; r < size; ++r) {
      if (r == me || piece_bytes(r, k) == 0) continue;
      areas.wait(ranks[r], shm::kFilled, before[r] + k + 1, ranks, ctx.deadline, "allgather");
      std::memcpy(base + block_at[r] + k * per_piece, areas.slot(ranks[r], slot),
                  piece_bytes(r, k));
    }
    publish(shm::kCopied, k);
  }
}

}  // namespace rf
