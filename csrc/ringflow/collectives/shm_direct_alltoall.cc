// Alltoall among ranks of one host that read each other's collective areas
// (transport/shm/collective_area.h) instead of exchanging pairwise over the rings.
//
// Each rank's slot holds one *part* per other rank (shm_direct_part_bytes each). The block a
// rank sends to rank p is cut into pieces of one part; piece k of every such block goes into
// slot k % kAreaSlots, and the receiver copies its part out. A receiver knows only the blocks it
// receives, not how the sender's buffer is laid out, so the slot's layout depends on ranks alone.
// A pair (a, b) takes ceil(max(a -> b, b -> a) / part) pieces, which both compute from the
// agreed splits: the pair's counters advance by that many in each stage (collective_area.h), and
// an empty block to some peer costs nothing. For piece k every rank
//   1. copies piece k of each of its blocks into its slot and publishes kFilled to those peers,
//   2. copies piece k of every block it receives out of the senders' slots (waiting on their
//      kFilled) and publishes kReduced (nothing is reduced) and kCopied.
// Filling piece k + 1 comes before copying piece k out; a slot is refilled once its readers have
// published kCopied for it (CollectiveAreas::wait_slot_free).
//
// Bytes through memory per byte sent, per rank: (N - 1)/N into the slot and out of it, read and
// written each time, plus 1/N copied to itself: 4 (N - 1)/N + 2/N, the same as pairwise exchange
// over the shared-memory rings (a copy into a ring and one out). What differs is synchronisation:
// pairwise runs N - 1 steps that each wait for one pair's ring, here every rank copies whatever
// is ready, in any order, with pieces of a whole slot part.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/transport/shm/collective_area.h"

namespace rf {

void shm_direct_alltoall(const CollectiveContext& ctx, const void* in,
                         const std::vector<size_t>& send_bytes, void* out,
                         const std::vector<size_t>& recv_bytes) {
  const int size = ctx.size();
  const int me = ctx.rank();
  const std::vector<size_t> send_at = block_offsets(send_bytes);
  const std::vector<size_t> recv_at = block_offsets(recv_bytes);
  const char* source = static_cast<const char*>(in);
  char* target = static_cast<char*>(out);
  if (send_bytes[me] > 0) std::memcpy(target + recv_at[me], source + send_at[me], send_bytes[me]);
  if (size == 1) return;
  shm::CollectiveAreas& areas = *ctx.transport.collective_areas();
  std::vector<int> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(ctx.transport.job_rank(r));
  const int self = ranks[me];
  const size_t part_bytes = shm_direct_part_bytes(ctx);
  std::vector<size_t> pieces_with(size, 0);
  size_t pieces = 0;
  for (int p = 0; p < size; ++p) {
    if (p == me) continue;
    pieces_with[p] = (std::max(send_bytes[p], recv_bytes[p]) + part_bytes - 1) / part_bytes;
    pieces = std::max(pieces, pieces_with[p]);
  }
  // Counts for each pair before this collective: this rank's own (collective_area.h).
  std::vector<uint64_t> base(size);
  for (int r = 0; r < size; ++r) {
    base[r] = r == me ? 0 : areas.counter(self, ranks[r], shm::kCopied);
  }
  // The peers (set ranks) that piece k concerns.
  auto peers_of = [&](size_t k) {
    std::vector<int> peers;
    for (int p = 0; p < size; ++p) {
      if (k < pieces_with[p]) peers.push_back(p);
    }
    return peers;
  };
  auto publish = [&](shm::AreaStage stage, size_t k, const std::vector<int>& peers) {
    std::vector<int> to;
    std::vector<uint64_t> values;
    for (int p : peers) {
      to.push_back(ranks[p]);
      values.push_back(base[p] + k + 1);
    }
    areas.publish(to, stage, values);
  };
  auto piece_bytes = [&](size_t block, size_t k) {
    const size_t first = k * part_bytes;
    return block > first ? std::min(part_bytes, block - first) : 0;
  };
  // Where, in `owner`'s slot, the part for `reader` lies.
  auto part_at = [&](int owner, int reader) {
    return static_cast<size_t>(reader < owner ? reader : reader - 1) * part_bytes;
  };
  auto fill = [&](size_t k) {
    if (k >= pieces) return;
    const std::vector<int> peers = peers_of(k);
    const int slot_index = static_cast<int>(k % shm::kAreaSlots);
    bool any = false;
    for (int p : peers) any = any || piece_bytes(send_bytes[p], k) > 0;
    if (any) {
      areas.wait_slot_free(slot_index, ctx.deadline);
      char* slot = areas.slot(self, slot_index);
      std::vector<std::pair<int, uint64_t>> readers;
      for (int p : peers) {
        std::memcpy(slot + part_at(me, p), source + send_at[p] + k * part_bytes,
                    piece_bytes(send_bytes[p], k));
        readers.emplace_back(ranks[p], base[p] + k + 1);
      }
      areas.slot_filled(slot_index, std::move(readers));
    }
    publish(shm::kFilled, k, peers);
  };

  fill(0);
  for (size_t k = 0; k < pieces; ++k) {
    fill(k + 1);
    const std::vector<int> peers = peers_of(k);
    const int slot_index = static_cast<int>(k % shm::kAreaSlots);
    for (int p : peers) {
      const size_t n = piece_bytes(recv_bytes[p], k);
      if (n == 0) continue;
      areas.wait(ranks[p], shm::kFilled, base[p] + k + 1, ranks, ctx.deadline, "alltoall");
      std::memcpy(target + recv_at[p] + k * part_bytes,
                  areas.slot(ranks[p], slot_index) + part_at(p, me), n);
    }
    publish(shm::kReduced, k, peers);
    publish(shm::kCopied, k, peers);
  }
}

}  // namespace rf
