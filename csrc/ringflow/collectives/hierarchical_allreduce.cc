// Hierarchical allreduce for ranks spread over H hosts with L ranks each: only 2 (H - 1) / H of
// the data leaves each host (split over its L ranks), where the flat ring sends 2 (N - 1) / N
// out of every host at least once — and, when a host's ranks are not neighbours in the ring,
// several times over the same link.
//
//   1. ring reduce-scatter inside the host (`local`, shared memory where the transport has it):
//      local rank l ends with block l of its host's sum;
//   2. allreduce of block l among the H ranks of local index l (`cross`, TCP between hosts),
//      the L cross groups at once, each over its own connections;
//   3. ring allgather of the finished blocks inside the host.
//
// Float order (identical on every rank, run to run, fused or not): the count is cut into L x H
// chunks as the flat algorithms cut it into N; block l is chunks l·H … l·H + H - 1. Element i of
// chunk k = l·H + h is, with x_{j,m} the input of local rank m on host j,
//   S_j = ((x_{j,l+1} + x_{j,l+2}) + …) + x_{j,l+L}        (local ranks mod L: the reduce-scatter)
//   result = S_{h+H-1} + (… + (S_{h+1} + S_h))              (hosts mod H: the ring's / Bruck's)
// This is not the flat order, so float sums may differ from RINGFLOW_HIERARCHICAL=off in the
// last bits (integers, Min and Max never do). On a layout where the engine enables it, every
// allreduce of the set takes this order — inline, gathered (small) or pipelined — and fusion
// keeps each tensor's elements in the chunk k they would have alone: fused and unfused results
// are bitwise equal.
#include <cstring>
#include <map>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/select.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

HostLayout host_layout(const std::vector<int>& host_of, int my_index) {
  HostLayout layout;
  std::vector<int> hosts;  // host ids in order of their lowest member
  std::map<int, std::vector<int>> members;
  for (int i = 0; i < static_cast<int>(host_of.size()); ++i) {
    std::vector<int>& on_host = members[host_of[i]];
    if (on_host.empty()) hosts.push_back(host_of[i]);
    on_host.push_back(i);
  }
  if (hosts.empty()) return layout;
  layout.hosts = static_cast<int>(hosts.size());
  layout.local_size = static_cast<int>(members[hosts[0]].size());
  layout.uniform = true;
  for (int host : hosts) {
    if (static_cast<int>(members[host].size()) != layout.local_size) layout.uniform = false;
    layout.grid.push_back(members[host]);
  }
  if (!layout.uniform) return layout;
  for (int h = 0; h < layout.hosts; ++h) {
    for (int m = 0; m < layout.local_size; ++m) {
      if (layout.grid[h][m] != my_index) continue;
      layout.host_index = h;
      layout.local_index = m;
    }
  }
  layout.local_members = layout.grid[layout.host_index];
  for (int h = 0; h < layout.hosts; ++h) {
    layout.cross_members.push_back(layout.grid[h][layout.local_index]);
  }
  return layout;
}

void fold_in_hierarchical_order(const std::vector<const char*>& contributions,
                                const HostLayout& layout, void* out, size_t count, DType dtype,
                                ReduceOp op, const std::vector<size_t>& chunk_counts) {
  const int local_size = layout.local_size;
  const int hosts = layout.hosts;
  const size_t elem = dtype_size(dtype);
  const std::vector<size_t> chunks =
      chunk_counts.empty() ? even_blocks(count, local_size * hosts) : chunk_counts;
  const std::vector<size_t> offsets = block_offsets(chunks);
  std::vector<char> host_sum;
  // S_j for chunk (l, ·) at `at`: the reduce-scatter's order inside host j.
  auto fold_host = [&](int j, int l, size_t first, size_t n, char* into) {
    auto x = [&](int m) { return contributions[layout.grid[j][(l + m) % local_size]] + first; };
    std::memcpy(into, x(1), n * elem);
    for (int m = 2; m <= local_size; ++m) reduce(x(m), into, into, n, dtype, op);
  };
  for (int k = 0; k < local_size * hosts; ++k) {
    if (chunks[k] == 0) continue;
    const int l = k / hosts;
    const int h = k % hosts;
    const size_t first = offsets[k] * elem;
    char* acc = static_cast<char*>(out) + first;
    host_sum.resize(chunks[k] * elem);
    fold_host(h, l, first, chunks[k], acc);
    for (int step = 1; step < hosts; ++step) {
      fold_host((h + step) % hosts, l, first, chunks[k], host_sum.data());
      reduce(host_sum.data(), acc, acc, chunks[k], dtype, op);
    }
  }
}

void gathered_hierarchical_allreduce(const CollectiveContext& ctx, const HostLayout& layout,
                                     const void* in, void* out, size_t count, DType dtype,
                                     ReduceOp op, const ChunkFinisher& finish,
                                     const std::vector<size_t>& chunk_counts) {
  if (count == 0) return;
  const size_t bytes = count * dtype_size(dtype);
  GatherBlock mine;
  mine.payload = static_cast<const char*>(in);
  mine.payload_bytes = bytes;
  GatheredBlocks all;
  bruck_allgather(ctx, mine, [bytes](const char*) { return bytes; }, &all);
  std::vector<const char*> contributions;
  for (const auto& payload : all.payloads) contributions.push_back(payload.data());
  fold_in_hierarchical_order(contributions, layout, out, count, dtype, op, chunk_counts);
  if (finish) finish(out, count);
}

void hierarchical_allreduce(const CollectiveContext& local, const CollectiveContext& cross,
                            const void* in, void* out, size_t count, DType dtype, ReduceOp op,
                            const ChunkFinisher& finish, const std::vector<size_t>& chunk_counts) {
  if (count == 0) return;
  const int local_size = local.size();
  const int hosts = cross.size();
  const int l = local.rank();
  const size_t elem = dtype_size(dtype);
  const std::vector<size_t> chunks =
      chunk_counts.empty() ? even_blocks(count, local_size * hosts) : chunk_counts;
  std::vector<size_t> blocks(local_size, 0);
  for (int b = 0; b < local_size; ++b) {
    for (int h = 0; h < hosts; ++h) blocks[b] += chunks[b * hosts + h];
  }
  const std::vector<size_t> offsets = block_offsets(blocks);
  char* mine = static_cast<char*>(out) + offsets[l] * elem;

  // In place is safe: ring_reduce_scatter reads block l of `in` only while writing it.
  if (local_size > 1) {
    ring_reduce_scatter(local, in, mine, blocks, dtype, op);
  } else if (in != out) {
    std::memcpy(out, in, count * elem);
  }
  // Every rank of this cross group holds a block of the same size: all skip it, or none.
  if (blocks[l] > 0) {
    const std::vector<size_t> cross_chunks(chunks.begin() + l * hosts,
                                           chunks.begin() + (l + 1) * hosts);
    if (choose_allreduce(blocks[l] * elem, hosts) == AllreduceAlgorithm::kBruck) {
      bruck_allreduce(cross, mine, mine, blocks[l], dtype, op, finish, cross_chunks);
    } else {
      ring_allreduce(cross, mine, mine, blocks[l], dtype, op, finish, cross_chunks);
    }
  }
  if (local_size > 1) {
    std::vector<size_t> block_bytes = blocks;
    for (size_t& b : block_bytes) b *= elem;
    ring_allgatherv(local, out, block_bytes);
  }
}

}  // namespace rf
