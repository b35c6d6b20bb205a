// join(): a rank that has run out of data (uneven batches) stops submitting and lets the others
// go on. Until every rank has joined, tensors that only joined ranks are missing are ready; the
// joined ranks take part with zeros (allreduce, reducescatter), no rows (allgather) or nothing
// to send (alltoall), and Average divides by the ranks that brought data. Every rank keeps the
// same joined set, so every rank plans the same operations.
#include "ringflow/common/check.h"
#include "ringflow/engine/engine.h"

namespace rf {

bool Engine::can_stand_in(Ready& item) {
  const PendingTensor& tensor = item.tensor;
  const OpKind kind = tensor.kind;
  std::string problem;
  if (kind == OpKind::kPointToPoint || kind == OpKind::kAddProcessSet ||
      kind == OpKind::kRemoveProcessSet) {
    problem = "cannot run while ranks have joined";
  } else if (kind == OpKind::kBroadcast) {
    const int32_t root = tensor.by_member[0].root;
    for (size_t i = 0; i < tensor.members.size(); ++i) {
      if (tensor.members[i] == root && tensor.stand_in[i]) {
        problem = "its root rank " + std::to_string(root) + " has joined and has no data to send";
      }
    }
  }
  if (problem.empty()) return true;
  if (item.local && !item.local->stand_in) {
    const Error error(ErrorKind::kInvalidArgument, "rank " + std::to_string(rank_) + ": " +
                                                       op_kind_name(kind) + " of tensor '" +
                                                       tensor.name + "': " + problem);
    settle(*item.local, &error);
  }
  return false;
}

std::unique_ptr<Engine::Local> Engine::stand_in_for(const PendingTensor& tensor, int64_t now) {
  auto it = std::lower_bound(tensor.members.begin(), tensor.members.end(), rank_);
  if (it == tensor.members.end() || *it != rank_) return nullptr;  // not this rank's set
  const size_t me = static_cast<size_t>(it - tensor.members.begin());
  RF_CHECK(tensor.stand_in[me], kInternal)
      << "tensor '" << tensor.name << "' is ready without this rank's request";
  auto local = std::make_unique<Local>();
  local->stand_in = true;
  local->own = tensor.by_member[me];
  local->handle = std::make_shared<Handle>();
  local->submitted_us = now;
  Request& r = local->submission.request;
  const Descriptor& d = local->own;
  r.kind = static_cast<OpKind>(d.kind);
  r.name = tensor.name;
  r.dtype = static_cast<DType>(d.dtype);
  r.op = static_cast<ReduceOp>(d.op);
  r.root = d.root;
  r.process_set = d.process_set;
  r.shape.assign(d.dims, d.dims + d.ndim);
  r.prescale = d.prescale;
  r.postscale = d.postscale;
  // Zeros in, and room for whatever comes back (a reducescatter block is at most the input).
  const size_t bytes = descriptor_elements(d) * dtype_size(r.dtype);
  local->zeros.assign(bytes, 0);
  local->result.assign(bytes, 0);
  local->submission.in = local->zeros.data();
  local->submission.out =
      r.kind == OpKind::kReducescatter ? local->result.data() : local->zeros.data();
  local->submission.splits.assign(tensor.members.size(), 0);
  return local;
}

}  // namespace rf
