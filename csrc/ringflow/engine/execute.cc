// Running what negotiation made ready: agreement checks, fusion into buckets, and one
// collective per bucket over the bucket's process set. Every rank plans the same buckets from
// the same descriptors and numbers them alike, so members meet on the same tags; ranks outside
// a bucket's set only count its tag.
#include <algorithm>
#include <cstring>
#include <iterator>

#include "ringflow/collectives/select.h"
#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/common/log.h"
#include "ringflow/engine/engine.h"
#include "ringflow/engine/fusion.h"
#include "ringflow/reduce/reduce.h"

namespace rf {

namespace {

size_t row_elements(const Descriptor& d) {
  size_t count = 1;
  for (int i = 1; i < d.ndim; ++i) count *= static_cast<size_t>(d.dims[i]);
  return count;
}

// The bytes a tensor's operation moves, as every rank computes it from the descriptors.
size_t planned_bytes(const PendingTensor& tensor) {
  const Descriptor& d = tensor.by_member[0];
  if (static_cast<OpKind>(d.kind) == OpKind::kAllgather) {
    size_t rows = 0;
    for (const Descriptor& m : tensor.by_member) rows += static_cast<size_t>(m.dims[0]);
    return rows * row_elements(d) * dtype_size(static_cast<DType>(d.dtype));
  }
  return descriptor_elements(d) * dtype_size(static_cast<DType>(d.dtype));
}

// What Average divides by while ranks have joined: the whole set, joined ranks counting as
// zeros (Horovod); with RINGFLOW_JOIN_AVERAGE=contributors, the ranks that brought data.
int64_t average_divisor(const PendingTensor& tensor) {
  if (env_config().join_average_contributors) return tensor.contributors();
  return static_cast<int64_t>(tensor.members.size());
}

// Allgatherv through the collective areas or around the ring; returns the timeline phase.
const char* allgatherv(const CollectiveContext& ctx, void* out, const std::vector<size_t>& blocks) {
  if (choose_shm_direct_allgather(ctx.size(), shm_direct_possible(ctx))) {
    shm_direct_allgatherv(ctx, out, blocks);
    return "SHM_DIRECT_ALLGATHER";
  }
  ring_allgatherv(ctx, out, blocks);
  return "RING_ALLGATHER";
}

const char* allreduce_phase(AllreduceAlgorithm algorithm) {
  return algorithm == AllreduceAlgorithm::kBruck ? "BRUCK_ALLREDUCE" : "RING_ALLREDUCE";
}

}  // namespace

void Engine::execute_ready(std::vector<PendingTensor> ready) {
  const int64_t now = Timeline::now_us();
  std::vector<Ready>& items = ready_items_;  // kept between rounds, like `ready` (below)
  items.clear();
  std::vector<std::unique_ptr<Local>> stand_ins;  // this rank's zeros while it has joined
  for (PendingTensor& tensor : ready) {
    Ready item;
    auto found = announced_.find(tensor.key);
    item.local = found == announced_.end() ? nullptr : found->second.get();
    item.tensor = std::move(tensor);
    item.ready_us = now;
    if (!item.local) {
      stand_ins.push_back(stand_in_for(item.tensor, now));
      item.local = stand_ins.back().get();
    }
    items.push_back(std::move(item));
  }
  // Disagreeing tensors fail (on their members) and move nothing; inline allreduces and control
  // operations complete at once; the rest are planned into buckets.
  std::vector<size_t> to_plan;
  std::vector<PlanItem> plan;
  for (size_t i = 0; i < items.size(); ++i) {
    Ready& item = items[i];
    const Descriptor& d = item.tensor.by_member[0];
    const OpKind kind = static_cast<OpKind>(d.kind);
    if (!descriptors_agree(item.tensor.by_member)) {
      if (item.local) {
        try {
          check_agreement(item.tensor.by_member, item.tensor.members, rank_,
                          item.local->submission.request);
          RF_THROW(kInternal) << "descriptors disagree but no field differs";
        } catch (const Error& error) {
          settle(*item.local, &error);
        }
      }
      continue;
    }
    if (kind == OpKind::kJoin) joined_.assign(size_, false);  // everyone joined: start afresh
    if (item.tensor.contributors() == static_cast<int>(item.tensor.members.size())) {
      cache_.put(item.tensor.key, item.tensor.by_member);
    } else if (!can_stand_in(item)) {
      continue;
    }
    const auto& has_data = item.tensor.has_inline_data;
    if (kind == OpKind::kAllreduce &&
        std::all_of(has_data.begin(), has_data.end(), [](bool present) { return present; })) {
      if (item.local) execute_inline_allreduce(item);
      continue;
    }
    if (kind == OpKind::kBarrier || kind == OpKind::kAddProcessSet ||
        kind == OpKind::kRemoveProcessSet || kind == OpKind::kJoin) {
      complete_control(item);
      continue;
    }
    to_plan.push_back(i);
    plan.push_back(PlanItem{&item.tensor.by_member[0], planned_bytes(item.tensor)});
  }
  const std::vector<std::vector<size_t>> buckets = plan_buckets(plan, fusion_threshold_);
  for (const std::vector<size_t>& indices : buckets) {
    std::vector<Ready> bucket;
    for (size_t i : indices) bucket.push_back(std::move(items[to_plan[i]]));
    execute(bucket, next_tag_++);
    for (Ready& item : bucket) table_.recycle(std::move(item.tensor));
  }
  for (Ready& item : items) table_.recycle(std::move(item.tensor));
  items.clear();
  table_.reuse_list(std::move(ready));
  // Everything ready this round has finished (or failed): forget it.
  for (auto it = announced_.begin(); it != announced_.end();) {
    if (!it->second->handle->done()) {
      ++it;
      continue;
    }
    auto node = announced_.extract(it++);
    *node.mapped() = Local{};  // its buffers and staging go now; the node waits for run_round
    if (spare_locals_.size() < kSpareNodes) spare_locals_.push_back(std::move(node));
  }
}

void Engine::settle(Local& local, const Error* error) {
  recorder_.finished(local.flight_id, error == nullptr, -1, Timeline::now_us());
  {
    // The name is free again before the caller can see the handle done and reuse it.
    std::lock_guard<std::mutex> lock(queue_mutex_);
    auto node = pending_names_.extract(key_of(local.own));
    if (node && spare_names_.size() < kSpareNodes) spare_names_.push_back(std::move(node));
  }
  if (error) {
    local.handle->fail(*error);
    return;
  }
  if (local.staging) {
    try {
      // Queued before the handle is done, so the caller's stream is ordered after it.
      local.staging->return_result(device_streams_.on(local.submission.device.device));
    } catch (const Error& failure) {
      local.handle->fail(failure);
      return;
    }
  }
  local.handle->complete();
}

void Engine::stage_device_input(Local& local) {
  const Request& request = local.submission.request;
  size_t in_bytes = dtype_size(request.dtype);
  for (int64_t dim : request.shape) in_bytes *= static_cast<size_t>(dim);
  // Broadcast and a receive write their result over the input itself.
  const bool writes_in = request.kind == OpKind::kBroadcast ||
                         (request.kind == OpKind::kPointToPoint && request.peer == rank_);
  local.staging = std::make_unique<DeviceStaging>(local.submission.device, in_bytes, writes_in);
}

void Engine::stage_bucket_in(std::vector<Ready>& bucket) {
  for (Ready& item : bucket) {
    Local& local = *item.local;
    if (!local.staging) continue;  // a joined rank's zeros
    const int device = local.submission.device.device;
    local.submission.in = local.staging->stage_in(pinned_pool_, device_streams_.on(device),
                                                  Deadline::after_seconds(timeout_s_));
    local.submission.out = local.staging->host_out();
  }
}

void Engine::complete_control(Ready& item) {
  if (!item.local) return;
  const Submission& submission = item.local->submission;
  if (submission.request.kind == OpKind::kAddProcessSet) {
    std::lock_guard<std::mutex> lock(sets_mutex_);
    item.local->handle->value = sets_.add(submission.set_ranks);
  } else if (submission.request.kind == OpKind::kRemoveProcessSet) {
    std::lock_guard<std::mutex> lock(sets_mutex_);
    sets_.remove(static_cast<int>(submission.request.root));
  } else if (submission.request.kind == OpKind::kJoin) {
    item.local->handle->value = item.tensor.last_announcer;
  }
  trace(item, "NEGOTIATE", item.local->submitted_us, item.ready_us);
  settle(*item.local, nullptr);
}

void Engine::execute_inline_allreduce(Ready& item) {
  // Every member's data came with the announcements: reduce here, as bruck_allreduce would.
  const Request& request = item.local->submission.request;
  const size_t count = descriptor_elements(item.local->own);
  const int set_size = static_cast<int>(item.tensor.members.size());
  const int64_t start = Timeline::now_us();
  recorder_.running(item.local->flight_id, round_tag_, 0, start);
  trace(item, "NEGOTIATE", item.local->submitted_us, item.ready_us);
  trace(item, "QUEUE", item.ready_us, start);
  thread_local std::vector<const char*> contributions;
  contributions.clear();
  for (std::vector<char>& data : item.tensor.inline_data) {
    if (request.prescale != 1.0) scale_by(data.data(), count, request.dtype, request.prescale);
    contributions.push_back(data.data());
  }
  void* out = item.local->submission.out;
  const std::vector<int>& members = item.tensor.members;
  const auto me = std::lower_bound(members.begin(), members.end(), rank_) - members.begin();
  const HostLayout& hosts = set_layout(members, static_cast<int>(me));  // only its grid is used
  if (hosts.enabled) {
    fold_in_hierarchical_order(contributions, hosts, out, count, request.dtype, request.op);
  } else {
    fold_in_ring_order(contributions, out, count, request.dtype, request.op);
  }
  scale_by(out, count, request.dtype, finishing_factor(request.op, request.postscale, set_size));
  if (timeline_.active()) trace(item, "INLINE_ALLREDUCE", start, Timeline::now_us());
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ++stats_.inline_allreduces;
  }
  settle(*item.local, nullptr);
}

void Engine::execute(std::vector<Ready>& bucket, uint64_t tag) {
  const std::vector<int>& members = bucket[0].tensor.members;
  auto it = std::lower_bound(members.begin(), members.end(), rank_);
  if (it == members.end() || *it != rank_) return;  // another set's operation
  const int index = static_cast<int>(it - members.begin());
  const int64_t start = Timeline::now_us();
  uint64_t bytes = 0;
  for (const Ready& item : bucket) {
    recorder_.running(item.local->flight_id, tag, static_cast<int>(bucket.size()) - 1, start);
    bytes += planned_bytes(item.tensor);
    trace(item, "NEGOTIATE", item.local->submitted_us, item.ready_us);
    trace(item, "QUEUE", item.ready_us, start);
  }
  SubsetTransport subset(runtime_->transport(), members, index);
  Transport& transport = members.size() == static_cast<size_t>(size_)
                             ? runtime_->transport()
                             : static_cast<Transport&>(subset);
  CollectiveContext ctx{transport, tag, Deadline::after_seconds(timeout_s_)};
  const Request& first = bucket[0].local->submission.request;
  recorder_.set_activity(op_kind_name(first.kind), tag, first.name, bytes);
  try {
    const bool on_device = first.on_device && try_device_allreduce(bucket, ctx);
    if (!on_device) stage_bucket_in(bucket);
    switch (on_device ? OpKind::kBarrier : first.kind) {
      case OpKind::kBarrier:  // done on the device
        break;
      case OpKind::kAllreduce:
        execute_allreduce(bucket, ctx);
        break;
      case OpKind::kAllgather:
        execute_allgather(bucket, ctx);
        break;
      case OpKind::kReducescatter:
        execute_reducescatter(bucket, ctx);
        break;
      case OpKind::kBroadcast:
        execute_broadcast(bucket[0], ctx);
        break;
      case OpKind::kAlltoall:
        execute_alltoall(bucket[0], ctx);
        break;
      case OpKind::kPointToPoint:
        execute_point_to_point(bucket[0], ctx);
        break;
      default:
        RF_THROW(kInternal) << "no executor for " << op_kind_name(first.kind);
    }
  } catch (const Error& error) {
    std::string what = "rank " + std::to_string(rank_) + ": " +
                       std::string(op_kind_name(first.kind)) + " of tensor '" + first.name + "'";
    if (bucket.size() > 1) what += " (fused with " + std::to_string(bucket.size() - 1) + " more)";
    throw Error(error.kind(), what + ": " + error.what());
  }
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ++stats_.responses;
    if (bucket.size() > 1) {
      ++stats_.fused_ops;
      stats_.fused_tensors += bucket.size();
    }
  }
  for (Ready& item : bucket) settle(*item.local, nullptr);
}

const char* Engine::count_direct_gather(const char* phase) {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  if (std::strncmp(phase, "SHM_DIRECT", 10) == 0) ++stats_.direct_gathers;
  return phase;
}

void Engine::trace(const Ready& item, const char* phase, int64_t start_us, int64_t end_us) {
  if (!timeline_.active() || !item.local) return;
  timeline_.record(item.local->submission.request.name, phase, start_us, end_us);
}

void Engine::execute_allreduce(std::vector<Ready>& bucket, const CollectiveContext& ctx) {
  const Request& request = bucket[0].local->submission.request;
  const DType dtype = request.dtype;
  const ReduceOp op = request.op;
  const size_t elem = dtype_size(dtype);
  const int set_size = ctx.size();
  const double factor = finishing_factor(op, request.postscale, average_divisor(bucket[0].tensor));
  auto finish = [=](void* data, size_t n) { scale_by(data, n, dtype, factor); };
  const HostLayout& hosts = set_layout(bucket[0].tensor.members, ctx.rank());
  const bool shared = shares_memory(bucket[0].tensor.members);  // as run_round decided inlining
  auto run = [&](const void* in, void* out, size_t count, const std::vector<size_t>& chunks) {
    const int64_t start = Timeline::now_us();
    const char* phase = "HIERARCHICAL_ALLREDUCE";
    const bool small =
        choose_allreduce(count * elem, set_size, shared) == AllreduceAlgorithm::kBruck;
    if (hosts.enabled && small && env_config().hierarchical != "on") {
      gathered_hierarchical_allreduce(ctx, hosts, in, out, count, dtype, op, finish, chunks);
      phase = "HIERARCHICAL_GATHER_ALLREDUCE";
    } else if (hosts.enabled) {
      SubsetTransport within(ctx.transport, hosts.local_members, hosts.local_index);
      SubsetTransport across(ctx.transport, hosts.cross_members, hosts.host_index);
      hierarchical_allreduce({within, ctx.tag, ctx.deadline}, {across, ctx.tag, ctx.deadline}, in,
                             out, count, dtype, op, finish, chunks);
    } else if (small) {
      bruck_allreduce(ctx, in, out, count, dtype, op, finish, chunks);
      phase = allreduce_phase(AllreduceAlgorithm::kBruck);
    } else if (choose_shm_direct(count * elem, set_size, shm_direct_possible(ctx))) {
      shm_direct_allreduce(ctx, in, out, count, dtype, op, finish, chunks);
      phase = "SHM_DIRECT_ALLREDUCE";
      std::lock_guard<std::mutex> lock(stats_mutex_);
      if (count > 0) ++stats_.direct_allreduces;
    } else {
      ring_allreduce(ctx, in, out, count, dtype, op, finish, chunks);
      phase = allreduce_phase(AllreduceAlgorithm::kRing);
    }
    const int64_t end = Timeline::now_us();
    for (const Ready& item : bucket) trace(item, phase, start, end);
  };
  if (bucket.size() == 1) {
    Submission& s = bucket[0].local->submission;
    const size_t count = descriptor_elements(bucket[0].local->own);
    const void* source = s.in;
    if (request.prescale != 1.0 && count > 0) {
      if (s.out != s.in) std::memcpy(s.out, s.in, count * elem);
      scale_by(s.out, count, dtype, request.prescale);
      source = s.out;
    }
    run(source, s.out, count, {});
    return;
  }
  std::vector<std::vector<size_t>> bytes;
  std::vector<const void*> sources;
  std::vector<void*> targets;
  for (const Ready& item : bucket) {
    std::vector<size_t> chunks = even_blocks(descriptor_elements(item.local->own), set_size);
    for (size_t& c : chunks) c *= elem;
    bytes.push_back(std::move(chunks));
    sources.push_back(item.local->submission.in);
    targets.push_back(item.local->submission.out);
  }
  FusedLayout layout(std::move(bytes));
  fusion_buffer_.reserve(layout.total_bytes());
  char* fused = fusion_buffer_.data();
  const int64_t pack_start = Timeline::now_us();
  pack_all(layout, sources, fused);
  const size_t count = layout.total_bytes() / elem;
  if (request.prescale != 1.0) scale_by(fused, count, dtype, request.prescale);
  const int64_t pack_end = Timeline::now_us();
  for (const Ready& item : bucket) trace(item, "MEMCPY_IN_FUSION_BUFFER", pack_start, pack_end);
  std::vector<size_t> chunks = layout.slot_bytes();
  for (size_t& c : chunks) c /= elem;
  run(fused, fused, count, chunks);
  const int64_t unpack_start = Timeline::now_us();
  unpack_all(layout, fused, targets);
  const int64_t unpack_end = Timeline::now_us();
  for (const Ready& item : bucket) {
    trace(item, "MEMCPY_OUT_FUSION_BUFFER", unpack_start, unpack_end);
  }
}

void Engine::execute_allgather(std::vector<Ready>& bucket, const CollectiveContext& ctx) {
  const int set_size = ctx.size();
  const int me = ctx.rank();
  std::vector<std::vector<size_t>> bytes;
  std::vector<const void*> sources;
  std::vector<void*> targets;
  for (Ready& item : bucket) {
    const Descriptor& own = item.local->own;
    const size_t row_bytes = row_elements(own) * dtype_size(static_cast<DType>(own.dtype));
    std::vector<size_t> blocks(set_size);
    int64_t rows = 0;
    for (int m = 0; m < set_size; ++m) {
      blocks[m] = static_cast<size_t>(item.tensor.by_member[m].dims[0]) * row_bytes;
      rows += item.tensor.by_member[m].dims[0];
    }
    Handle& handle = *item.local->handle;
    size_t total = 0;
    for (size_t b : blocks) total += b;
    handle.output.allocate(total);
    handle.output_shape.assign(own.dims, own.dims + own.ndim);
    handle.output_shape[0] = rows;
    bytes.push_back(std::move(blocks));
    sources.push_back(item.local->submission.in);
    targets.push_back(handle.output.data.get());
  }
  FusedLayout layout(std::move(bytes));
  const int64_t start = Timeline::now_us();
  if (bucket.size() == 1) {
    char* out = static_cast<char*>(targets[0]);
    if (layout.block_bytes(0, me)) {
      std::memcpy(out + layout.tensor_offset(0, me), sources[0], layout.block_bytes(0, me));
    }
    std::vector<size_t> blocks(set_size);
    for (int m = 0; m < set_size; ++m) blocks[m] = layout.block_bytes(0, m);
    const char* phase = allgatherv(ctx, out, blocks);
    count_direct_gather(phase);
    trace(bucket[0], phase, start, Timeline::now_us());
    return;
  }
  fusion_buffer_.reserve(layout.total_bytes());
  char* fused = fusion_buffer_.data();
  pack_slot(layout, me, sources, fused);
  const int64_t packed = Timeline::now_us();
  const char* phase = allgatherv(ctx, fused, layout.slot_bytes());
  count_direct_gather(phase);
  const int64_t gathered = Timeline::now_us();
  unpack_all(layout, fused, targets);
  const int64_t end = Timeline::now_us();
  for (const Ready& item : bucket) {
    trace(item, "MEMCPY_IN_FUSION_BUFFER", start, packed);
    trace(item, phase, packed, gathered);
    trace(item, "MEMCPY_OUT_FUSION_BUFFER", gathered, end);
  }
}

void Engine::execute_reducescatter(std::vector<Ready>& bucket, const CollectiveContext& ctx) {
  const Request& request = bucket[0].local->submission.request;
  const DType dtype = request.dtype;
  const ReduceOp op = request.op;
  const size_t elem = dtype_size(dtype);
  const int set_size = ctx.size();
  const int me = ctx.rank();
  const double factor = finishing_factor(op, request.postscale, average_divisor(bucket[0].tensor));
  std::vector<std::vector<size_t>> bytes;
  std::vector<const void*> sources;
  std::vector<void*> targets;
  for (const Ready& item : bucket) {
    const Descriptor& own = item.local->own;
    std::vector<size_t> blocks = even_blocks(static_cast<size_t>(own.dims[0]), set_size);
    for (size_t& b : blocks) b *= row_elements(own) * elem;
    bytes.push_back(std::move(blocks));
    sources.push_back(item.local->submission.in);
    targets.push_back(item.local->submission.out);
  }
  FusedLayout layout(std::move(bytes));
  std::vector<size_t> counts = layout.slot_bytes();
  for (size_t& c : counts) c /= elem;
  // Average's 1/N and postscale on this rank's reduced block.
  auto finish = [&](void* block) { scale_by(block, counts[me], dtype, factor); };
  const int64_t start = Timeline::now_us();
  if (bucket.size() == 1) {
    const void* source = sources[0];
    if (request.prescale != 1.0) {  // on a copy: the caller's input stays as it was
      fusion_buffer_.reserve(layout.total_bytes());
      std::memcpy(fusion_buffer_.data(), source, layout.total_bytes());
      scale_by(fusion_buffer_.data(), layout.total_bytes() / elem, dtype, request.prescale);
      source = fusion_buffer_.data();
    }
    const char* phase = run_reduce_scatter(ctx, source, targets[0], counts, dtype, op);
    finish(targets[0]);
    trace(bucket[0], count_direct_gather(phase), start, Timeline::now_us());
    return;
  }
  fusion_buffer_.reserve(layout.total_bytes() + layout.slot_bytes()[me]);
  char* fused = fusion_buffer_.data();
  char* reduced = fused + layout.total_bytes();
  const bool gathers = reduce_scatter_gathers(ctx, layout.total_bytes(), request.prescale);
  if (!gathers) pack_all(layout, sources, fused);
  if (request.prescale != 1.0) {
    scale_by(fused, layout.total_bytes() / elem, dtype, request.prescale);
  }
  const int64_t packed = Timeline::now_us();
  auto* phase = count_direct_gather(run_reduce_scatter(
      ctx, fused, reduced, counts, dtype, op, gathers ? fused_gather(layout, sources) : nullptr));
  finish(reduced);
  const int64_t scattered = Timeline::now_us();
  unpack_slot(layout, me, reduced, targets);
  const int64_t end = Timeline::now_us();
  for (const Ready& item : bucket) {
    trace(item, "MEMCPY_IN_FUSION_BUFFER", start, packed);
    trace(item, phase, packed, scattered);
    trace(item, "MEMCPY_OUT_FUSION_BUFFER", scattered, end);
  }
}

void Engine::execute_broadcast(Ready& item, const CollectiveContext& ctx) {
  const Submission& s = item.local->submission;
  const size_t bytes = descriptor_elements(item.local->own) * dtype_size(s.request.dtype);
  const std::vector<int>& members = item.tensor.members;
  // root_rank is a rank of the job (as in Horovod); the algorithms count within the set.
  const int root = static_cast<int>(
      std::lower_bound(members.begin(), members.end(), s.request.root) - members.begin());
  const int64_t start = Timeline::now_us();
  if (choose_shm_direct_broadcast(ctx.size(), shm_direct_possible(ctx))) {
    std::vector<size_t> blocks(ctx.size(), 0);
    blocks[root] = bytes;
    shm_direct_allgatherv(ctx, s.in, blocks);
    count_direct_gather("SHM_DIRECT_BROADCAST");
    trace(item, "SHM_DIRECT_BROADCAST", start, Timeline::now_us());
  } else if (choose_broadcast(bytes, ctx.size()) == BroadcastAlgorithm::kChain) {
    chain_broadcast(ctx, s.in, bytes, root);
    trace(item, "CHAIN_BROADCAST", start, Timeline::now_us());
  } else {
    binomial_broadcast(ctx, s.in, bytes, root);
    trace(item, "BINOMIAL_BROADCAST", start, Timeline::now_us());
  }
}

void Engine::execute_alltoall(Ready& item, const CollectiveContext& ctx) {
  const Submission& s = item.local->submission;
  const int set_size = ctx.size();
  const size_t row_bytes = row_elements(item.local->own) * dtype_size(s.request.dtype);
  const int64_t start = Timeline::now_us();
  // Every member tells every other how many rows it sends: an alltoall of one int64 each.
  Handle& handle = *item.local->handle;
  handle.received_splits.assign(set_size, 0);
  std::vector<size_t> eight(set_size, sizeof(int64_t));
  pairwise_alltoall(ctx, s.splits.data(), eight, handle.received_splits.data(), eight);
  std::vector<size_t> send_bytes(set_size), recv_bytes(set_size);
  int64_t rows = 0;
  for (int m = 0; m < set_size; ++m) {
    RF_CHECK(handle.received_splits[m] >= 0 && handle.received_splits[m] <= (int64_t{1} << 40),
             kPeerFailure)
        << "rank " << m << " of the set announced an impossible alltoall split";
    send_bytes[m] = static_cast<size_t>(s.splits[m]) * row_bytes;
    recv_bytes[m] = static_cast<size_t>(handle.received_splits[m]) * row_bytes;
    rows += handle.received_splits[m];
  }
  handle.output.allocate(block_offsets(recv_bytes).back());
  handle.output_shape.assign(item.local->own.dims, item.local->own.dims + item.local->own.ndim);
  handle.output_shape[0] = rows;
  const char* phase = run_alltoall(ctx, planned_bytes(item.tensor), s.in, send_bytes,
                                   handle.output.data.get(), recv_bytes);
  trace(item, count_direct_gather(phase), start, Timeline::now_us());
}

void Engine::execute_point_to_point(Ready& item, const CollectiveContext& ctx) {
  const Submission& s = item.local->submission;
  const size_t bytes = descriptor_elements(item.local->own);
  const int other = 1 - ctx.rank();  // a set of two: the source and the destination
  if (s.request.root == rank_) {
    ctx.transport.post_send(other, s.in, bytes, ctx.tag);
  } else {
    ctx.transport.post_recv(other, s.in, bytes, ctx.tag);
  }
  ctx.transport.wait_all(ctx.deadline);
}

}  // namespace rf
