// The collective algorithms: free functions over a transport. Each knows nothing about the
// engine, Python or sockets; each lives in its own file. Arguments were validated and agreed
// between ranks (negotiated) before any of these runs, so they only move and reduce bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "ringflow/common/deadline.h"
#include "ringflow/common/dtype.h"
#include "ringflow/transport/transport.h"

namespace rf {

// What every collective call needs: the peers, the operation's tag (its sequence number, the
// same on every rank) and when to give up.
struct CollectiveContext {
  Transport& transport;
  uint64_t tag;
  Deadline deadline;
  int rank() const { return transport.rank(); }
  int size() const { return transport.size(); }
};

// Applied to each fully reduced piece before it is shared (Average's division, postscale), so
// every rank finishes 1/N of the data instead of all of it.
using ChunkFinisher = std::function<void(void* data, size_t count)>;

// out = reduction of every rank's in (count elements); in == out is allowed. Reduce-scatter
// then allgather around the ring, pipelined by segments. chunk_counts (one per rank, summing to
// count) sets which elements form each rank's chunk; empty means even_blocks(count, N).
// Element i of chunk c is reduced as x_{c+N-1} op (… op (x_{c+1} op x_c)) whatever the algorithm.
void ring_allreduce(const CollectiveContext& ctx, const void* in, void* out, size_t count,
                    DType dtype, ReduceOp op, const ChunkFinisher& finish,
                    const std::vector<size_t>& chunk_counts = {});
// The same result for small counts in ceil(log2 N) steps: every rank gathers every input
// (Bruck) and folds each chunk in the ring's order.
void bruck_allreduce(const CollectiveContext& ctx, const void* in, void* out, size_t count,
                     DType dtype, ReduceOp op, const ChunkFinisher& finish,
                     const std::vector<size_t>& chunk_counts = {});
// The same result for ranks of one host that map each other's collective area: each reduces its
// slice of every piece straight from the others' memory (shm_direct_allreduce.cc), in the
// ring's order. Only where shm_direct_possible(ctx), which every member answers alike.
bool shm_direct_possible(const CollectiveContext& ctx);
void shm_direct_allreduce(const CollectiveContext& ctx, const void* in, void* out, size_t count,
                          DType dtype, ReduceOp op, const ChunkFinisher& finish,
                          const std::vector<size_t>& chunk_counts = {});
// out = every rank's contribution (by rank) reduced chunk by chunk in the ring's order: what
// bruck_allreduce does once it holds them all (the engine also uses it for inline data).
void fold_in_ring_order(const std::vector<const char*>& contributions, void* out, size_t count,
                        DType dtype, ReduceOp op, const std::vector<size_t>& chunk_counts = {});

// Where a set's ranks live. Uniform: every host holds local_size ranks; this rank is
// local_index on its host and its host is host_index (hosts numbered by their lowest member).
// `enabled`: the engine runs allreduce hierarchically (select.h, choose_hierarchical).
struct HostLayout {
  bool uniform = false;
  bool enabled = false;
  int hosts = 1;
  int local_size = 1;
  int local_index = 0;
  int host_index = 0;
  std::vector<std::vector<int>> grid;  // grid[h][m]: set rank of local index m on host h
  std::vector<int> local_members;      // grid[host_index]
  std::vector<int> cross_members;      // grid[h][local_index] for every host h
};
// host_of[i]: set rank i's host, any numbering alike on every rank.
HostLayout host_layout(const std::vector<int>& host_of, int my_index);

// The allreduce's result for ranks on several hosts: ring reduce-scatter inside the host
// (`local`), allreduce of this rank's block among the ranks with its local index (`cross`, one
// per host, all local indices at once), ring allgather inside the host. chunk_counts: L x H
// chunks (empty: even_blocks(count, L x H)); chunk l·H + h is reduced inside the host in block l,
// then across hosts starting at host h — see hierarchical_allreduce.cc for the float order.
void hierarchical_allreduce(const CollectiveContext& local, const CollectiveContext& cross,
                            const void* in, void* out, size_t count, DType dtype, ReduceOp op,
                            const ChunkFinisher& finish,
                            const std::vector<size_t>& chunk_counts = {});
// The same result for small counts: every rank gathers every input (Bruck, over the whole set)
// and folds in hierarchical_allreduce's order.
void gathered_hierarchical_allreduce(const CollectiveContext& ctx, const HostLayout& layout,
                                     const void* in, void* out, size_t count, DType dtype,
                                     ReduceOp op, const ChunkFinisher& finish,
                                     const std::vector<size_t>& chunk_counts = {});
// out = every set rank's contribution reduced in hierarchical_allreduce's order.
void fold_in_hierarchical_order(const std::vector<const char*>& contributions,
                                const HostLayout& layout, void* out, size_t count, DType dtype,
                                ReduceOp op, const std::vector<size_t>& chunk_counts = {});

// data (bytes) is copied from root to every rank: binomial tree (log2 N rounds, for small
// buffers) or pipelined chain (every link carries the data once, for large ones).
void binomial_broadcast(const CollectiveContext& ctx, void* data, size_t bytes, int root);
void chain_broadcast(const CollectiveContext& ctx, void* data, size_t bytes, int root);

// Rank r's block (block_bytes[r] bytes) is already at its place in `out`, which holds all blocks
// back to back in rank order; fills in the others around the ring.
void ring_allgatherv(const CollectiveContext& ctx, void* out,
                     const std::vector<size_t>& block_bytes);
// The same, for ranks of one host that map each other's collective areas (shm_direct_possible):
// every rank copies its block into its area and the others' out of theirs. A broadcast is the
// case where only the root's block is not empty.
void shm_direct_allgatherv(const CollectiveContext& ctx, void* out,
                           const std::vector<size_t>& block_bytes);

// `in` holds every block back to back (block_counts[r] elements for rank r); `out` receives
// this rank's block, reduced over all ranks.
void ring_reduce_scatter(const CollectiveContext& ctx, const void* in, void* out,
                         const std::vector<size_t>& block_counts, DType dtype, ReduceOp op);
// The same result for ranks of one host that map each other's collective areas: each reduces its
// own block straight from the others' slots (shm_direct_reduce_scatter.cc), in the ring's order.
// Only where shm_direct_part_bytes(ctx) > 0, which every member answers alike: the bytes of each
// rank's slot that it gives each other member (0: no areas, or slots too small).
// `gather`, if set, stands for `in`: it copies bytes [offset, offset + bytes) of the input to
// `dst`, so a fused bucket's tensors go straight into the area without being packed first.
size_t shm_direct_part_bytes(const CollectiveContext& ctx);
using InputGather = std::function<void(size_t offset, size_t bytes, char* dst)>;
void shm_direct_reduce_scatter(const CollectiveContext& ctx, const void* in, void* out,
                               const std::vector<size_t>& block_counts, DType dtype, ReduceOp op,
                               const InputGather& gather = {});

// send_bytes[p] bytes from `in` (blocks in rank order) go to rank p; recv_bytes[p] bytes from
// rank p land in `out` (blocks in rank order).
void pairwise_alltoall(const CollectiveContext& ctx, const void* in,
                       const std::vector<size_t>& send_bytes, void* out,
                       const std::vector<size_t>& recv_bytes);
// The same through the collective areas (shm_direct_alltoall.cc; where shm_direct_part_bytes > 0).
void shm_direct_alltoall(const CollectiveContext& ctx, const void* in,
                         const std::vector<size_t>& send_bytes, void* out,
                         const std::vector<size_t>& recv_bytes);

// Returns once every rank has entered it.
void dissemination_barrier(const CollectiveContext& ctx);

// One rank's contribution to bruck_allgather: a fixed-size header and a payload.
struct GatherBlock {
  std::vector<char> header;
  const char* payload = nullptr;
  size_t payload_bytes = 0;
};
struct GatheredBlocks {
  std::vector<char> headers;                // every rank's header, in rank order
  std::vector<std::vector<char>> payloads;  // every rank's payload, in rank order
};
// How many payload bytes follow a header (the receiver's view; must match what the sender sent).
using PayloadSize = std::function<size_t(const char* header)>;
// Every rank ends with every rank's block, in ceil(log2 N) rounds.
void bruck_allgather(const CollectiveContext& ctx, const GatherBlock& mine,
                     const PayloadSize& payload_size, GatheredBlocks* all);

// Byte offsets of consecutive blocks of the given sizes (one more entry: the total).
std::vector<size_t> block_offsets(const std::vector<size_t>& sizes);
// count split into `parts` blocks: count / parts each, the first count % parts get one more.
std::vector<size_t> even_blocks(size_t count, int parts);

}  // namespace rf
