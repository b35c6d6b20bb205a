// Tensor fusion (gradient bucketing): many small ready tensors travel as one message.
//
// The fusion buffer is slot-major: slot c holds the c-th block of every tensor in the bucket,
// where a tensor's blocks are what the collective would give each rank of the set were the
// tensor alone (its ring chunks for allreduce, its rows per rank for reducescatter and
// allgather). An element therefore lands in the same chunk fused or not, is reduced in the same
// order, and fused results are bitwise identical to unfused ones.
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

#include "ringflow/engine/negotiation.h"

namespace rf {

// Tensors at least this large run on their own buffers: copying them into and out of the
// fusion buffer costs more than the one operation's latency that fusing saves.
constexpr size_t kFusionMaxTensorBytes = size_t{1} << 20;

// What planning needs to know of a ready tensor (identical on every rank).
struct PlanItem {
  const Descriptor* descriptor;  // the first member's
  size_t bytes;                  // what its operation moves
};

// Groups tensors into operations, in order: each fusible tensor (allreduce, allgather,
// reducescatter, under kFusionMaxTensorBytes, or grouped) joins the first open bucket of the
// same set, kind, dtype, op, scaling and group that it fits (threshold bytes; a group's bucket
// takes the whole group); the others run alone. Returns indices into `items`, per operation.
std::vector<std::vector<size_t>> plan_buckets(const std::vector<PlanItem>& items, size_t threshold);

class FusedLayout {
 public:
  // bytes[t][c]: the size of tensor t's block c.
  explicit FusedLayout(std::vector<std::vector<size_t>> bytes);
  size_t tensors() const { return bytes_.size(); }
  size_t slots() const { return slot_bytes_.size(); }
  size_t total_bytes() const { return total_; }
  const std::vector<size_t>& slot_bytes() const { return slot_bytes_; }
  size_t block_bytes(size_t t, size_t c) const { return bytes_[t][c]; }
  size_t fused_offset(size_t t, size_t c) const { return fused_offset_[t][c]; }
  // Where block c starts within tensor t's own (unfused) buffer.
  size_t tensor_offset(size_t t, size_t c) const { return tensor_offset_[t][c]; }

 private:
  std::vector<std::vector<size_t>> bytes_;
  std::vector<std::vector<size_t>> fused_offset_;
  std::vector<std::vector<size_t>> tensor_offset_;
  std::vector<size_t> slot_bytes_;
  size_t total_ = 0;
};

// Copies every block of each tensor (tensor t's buffer is sources[t]) into the fusion buffer.
void pack_all(const FusedLayout& layout, const std::vector<const void*>& sources, char* fused);
// Copies bytes [offset, offset + bytes) of what pack_all would write, straight from the tensors
// (collectives' InputGather); layout and sources must outlive it.
std::function<void(size_t offset, size_t bytes, char* dst)> fused_gather(
    const FusedLayout& layout, const std::vector<const void*>& sources);
// Copies only slot c (source t holds just its block c, at offset 0): an allgather's own part.
void pack_slot(const FusedLayout& layout, size_t c, const std::vector<const void*>& sources,
               char* fused);
// The reverse of pack_all: every block back to its place in targets[t].
void unpack_all(const FusedLayout& layout, const char* fused, const std::vector<void*>& targets);
// Slot c alone (`slot` holds just that slot) to targets[t]: a reducescatter's own block.
void unpack_slot(const FusedLayout& layout, size_t c, const char* slot,
                 const std::vector<void*>& targets);

}  // namespace rf
