#include "ringflow/engine/runtime.h"

#include <unistd.h>

#include <cstring>
#include <numeric>

#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/select.h"
#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/reduce/reduce.h"
#include "ringflow/transport/frame.h"

namespace rf {

namespace {

std::string host_identity(const std::string& advertise_ip) {
  std::string configured = env_string("RINGFLOW_HOST_ID", "");
  if (!configured.empty()) return configured;
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  // Network namespaces on one machine share a hostname but not an address.
  return std::string(name) + "@" + advertise_ip;
}

std::vector<size_t> rows_to_bytes(const std::vector<int64_t>& rows, size_t row_bytes) {
  std::vector<size_t> bytes(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) bytes[i] = static_cast<size_t>(rows[i]) * row_bytes;
  return bytes;
}

}  // namespace

size_t TensorRef::count() const {
  size_t total = 1;
  for (int64_t dim : shape) total *= static_cast<size_t>(dim);
  return total;
}

size_t TensorRef::row_count() const {
  size_t total = 1;
  for (size_t i = 1; i < shape.size(); ++i) total *= static_cast<size_t>(shape[i]);
  return total;
}

Runtime::Runtime(const RuntimeOptions& options)
    : options_(options), sends_to_(options.size, 0), recvs_from_(options.size, 0) {
  RF_CHECK(options.size >= 1 && options.rank >= 0 && options.rank < options.size, kInvalidArgument)
      << "rank " << options.rank << " is not in a world of size " << options.size;
  RF_CHECK(options.timeout_s > 0, kInvalidArgument) << "timeout must be positive";
  (void)env_config();  // reject malformed RINGFLOW_* variables at init, not mid-job
  if (options.size == 1) {
    transport_ = single_process_mesh().transport;
    return;
  }
  try {
    join();
  } catch (const Error& error) {
    // Store and socket helpers do not know the rank; every init error should say it.
    const std::string text = error.what();
    if (text.rfind("rank ", 0) == 0) throw;
    throw Error(error.kind(), "rank " + std::to_string(options.rank) +
                                  ": init() with the store at " + options.store_host + ":" +
                                  std::to_string(options.store_port) + ": " + text);
  }
}

void Runtime::join() {
  const RuntimeOptions& options = options_;
  Deadline deadline = Deadline::after_seconds(options.timeout_s);
  if (options.host_store && options.rank == 0) {
    StoreServerOptions server;
    server.host = options.store_host;
    server.port = options.store_port;
    server.secret = options.secret;
    server.job_id = options.job_id;
    server.generation = options.generation;
    store_server_ = std::make_unique<TcpStoreServer>(server);
  }
  StoreClientOptions client;
  client.server = net::Endpoint{options.store_host, options.store_port};
  client.secret = options.secret;
  client.job_id = options.job_id;
  client.rank = options.rank;
  client.generation = options.generation;
  store_ = std::make_unique<TcpStoreClient>(client, deadline);

  RendezvousOptions rendezvous;
  rendezvous.rank = options.rank;
  rendezvous.size = options.size;
  rendezvous.generation = options.generation;
  rendezvous.secret = options.secret;
  rendezvous.job_id = options.job_id;
  rendezvous.advertise_ip = store_->local_ip();
  rendezvous.host_id = host_identity(rendezvous.advertise_ip);
  Mesh mesh = connect_mesh(*store_, rendezvous, deadline);
  transport_ = std::move(mesh.transport);
  topology_ = mesh.topology;
  // A launcher's own numbering wins (users pick devices by it); ours fills the gaps.
  if (options.local_rank >= 0) topology_.local_rank = options.local_rank;
  if (options.local_size >= 0) topology_.local_size = options.local_size;
  // Nobody reads the store after this barrier, so rank 0 may close it whenever it shuts down.
  CollectiveContext ctx{*transport_, 0, deadline};
  dissemination_barrier(ctx);
}

Runtime::~Runtime() { close(); }

void Runtime::close() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) return;
  closed_ = true;
  transport_.reset();
  if (store_) store_->close();
  if (store_server_) store_server_->close();
}

std::string Runtime::context(const char* op, const std::string& name) const {
  return "rank " + std::to_string(options_.rank) + ": " + op + " of tensor '" + name + "'";
}

CollectiveContext Runtime::next_context() {
  return CollectiveContext{*transport_, next_tag_++, Deadline::after_seconds(options_.timeout_s)};
}

void Runtime::check_usable() const {
  RF_CHECK(!closed_, kInvalidArgument)
      << "rank " << options_.rank << ": this ringflow runtime was shut down";
  if (broken_) {
    RF_THROW(kPeerFailure) << "rank " << options_.rank
                           << ": ringflow cannot run more operations after an earlier failure: "
                           << broken_->what();
  }
}

template <typename Fn>
void Runtime::io(const std::string& what, Fn&& fn) {
  try {
    fn();
  } catch (const Error& error) {
    fail(Error(error.kind(), what + ": " + error.what()));
  } catch (const std::exception& error) {
    // Out of memory and the like, mid-collective: the transport may still hold operations
    // into buffers that are gone, so it is aborted like after any I/O failure.
    fail(Error(ErrorKind::kInternal, what + ": " + error.what()));
  }
}

void Runtime::fail(const Error& failure) {
  broken_ = failure;
  transport_->abort(failure.what());
  throw failure;
}

Negotiated Runtime::negotiate(const Request& request) {
  Negotiated negotiated;
  if (options_.size == 1) {
    // Nobody to disagree with: only this rank's own input can be wrong.
    RF_CHECK(request.invalid_reason.empty(), kInvalidArgument)
        << context(op_kind_name(request.kind), request.name) << ": " << request.invalid_reason;
    negotiated.descriptors.push_back(describe(request));
    if (request.inline_payload) {
      const char* data = static_cast<const char*>(request.inline_payload);
      negotiated.payloads.emplace_back(data,
                                       data + inline_payload_bytes(negotiated.descriptors[0]));
    }
    return negotiated;
  }
  CollectiveContext ctx = next_context();
  io(context(op_kind_name(request.kind), request.name) + " (negotiation)",
     [&] { negotiated = exchange_descriptors(ctx, request); });
  check_agreement(negotiated.descriptors, options_.rank, request);
  return negotiated;
}

void Runtime::allreduce(const TensorRef& in, void* out, ReduceOp op, double prescale,
                        double postscale) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  Request request{OpKind::kAllreduce, in.name,   in.dtype,         op, 0, in.shape,
                  prescale,           postscale, in.invalid_reason};
  if (request.invalid_reason.empty() && !reduction_supported(in.dtype, op)) {
    request.invalid_reason = std::string(reduce_op_name(op)) + " is not supported for dtype " +
                             dtype_name(in.dtype) + " (bool supports Min and Max)";
  }
  const int world = options_.size;
  const DType dtype = in.dtype;
  // Average's division and postscale, applied to each finished piece.
  auto finish = [=](void* data, size_t n) {
    if (op == ReduceOp::kAverage) divide_by(data, n, dtype, world);
    scale_by(data, n, dtype, postscale);
  };
  if (choose_allreduce(in.bytes(), world) == AllreduceAlgorithm::kBruck) {
    allreduce_bruck(request, in, out, finish);
  } else {
    allreduce_ring(request, in, out, finish);
  }
}

void Runtime::allreduce_bruck(Request& request, const TensorRef& in, void* out,
                              const ChunkFinisher& finish) {
  // The data travels with the descriptor, so it is prescaled (on a copy) before that.
  const size_t count = in.count();
  std::vector<char> prescaled;
  const void* source = in.data;
  if (request.prescale != 1.0 && request.invalid_reason.empty()) {
    prescaled.assign(static_cast<const char*>(in.data),
                     static_cast<const char*>(in.data) + in.bytes());
    scale_by(prescaled.data(), count, in.dtype, request.prescale);
    source = prescaled.data();
  }
  request.inline_payload = source ? source : "";
  Negotiated negotiated = negotiate(request);
  if (count == 0) return;
  // Every rank folds every contribution in rank order: the same bits everywhere.
  const auto& parts = negotiated.payloads;
  if (parts.size() == 1) {
    std::memcpy(out, parts[0].data(), in.bytes());
  } else {
    reduce(parts[0].data(), parts[1].data(), out, count, in.dtype, request.op);
    for (size_t r = 2; r < parts.size(); ++r) {
      reduce(out, parts[r].data(), out, count, in.dtype, request.op);
    }
  }
  finish(out, count);
}

void Runtime::allreduce_ring(const Request& request, const TensorRef& in, void* out,
                             const ChunkFinisher& finish) {
  negotiate(request);
  const size_t count = in.count();
  const void* source = in.data;
  if (request.prescale != 1.0 && count > 0) {
    if (out != in.data) std::memcpy(out, in.data, in.bytes());
    scale_by(out, count, in.dtype, request.prescale);
    source = out;
  }
  CollectiveContext ctx = next_context();
  io(context("allreduce", in.name),
     [&] { ring_allreduce(ctx, source, out, count, in.dtype, request.op, finish); });
}

void Runtime::broadcast(const TensorRef& buffer, int root) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  Request request{OpKind::kBroadcast, buffer.name, buffer.dtype, ReduceOp::kSum,       root,
                  buffer.shape,       1.0,         1.0,          buffer.invalid_reason};
  if (request.invalid_reason.empty() && (root < 0 || root >= options_.size)) {
    request.invalid_reason = "root_rank " + std::to_string(root) + " is out of range for " +
                             std::to_string(options_.size) + " ranks";
  }
  negotiate(request);
  CollectiveContext ctx = next_context();
  io(context("broadcast", buffer.name), [&] {
    if (choose_broadcast(buffer.bytes(), options_.size) == BroadcastAlgorithm::kChain) {
      chain_broadcast(ctx, buffer.data, buffer.bytes(), root);
    } else {
      binomial_broadcast(ctx, buffer.data, buffer.bytes(), root);
    }
  });
}

std::vector<int64_t> Runtime::allgather_sizes(const TensorRef& in) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  Request request{OpKind::kAllgather, in.name, in.dtype, ReduceOp::kSum,   0,
                  in.shape,           1.0,     1.0,      in.invalid_reason};
  if (request.invalid_reason.empty() && in.shape.empty()) {
    request.invalid_reason = "allgather needs at least one dimension (got a scalar)";
  }
  Negotiated negotiated = negotiate(request);
  std::vector<int64_t> first_dims;
  for (const auto& d : negotiated.descriptors) first_dims.push_back(d.dims[0]);
  return first_dims;
}

void Runtime::allgather(const TensorRef& in, const std::vector<int64_t>& first_dims, void* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  RF_CHECK_EQ(first_dims.size(), static_cast<size_t>(options_.size), kInvalidArgument);
  const size_t row_bytes = in.row_count() * dtype_size(in.dtype);
  std::vector<size_t> blocks = rows_to_bytes(first_dims, row_bytes);
  std::vector<size_t> offsets = block_offsets(blocks);
  RF_CHECK_EQ(blocks[options_.rank], in.bytes(), kInvalidArgument);
  if (in.bytes() > 0) {
    std::memcpy(static_cast<char*>(out) + offsets[options_.rank], in.data, in.bytes());
  }
  CollectiveContext ctx = next_context();
  io(context("allgather", in.name), [&] { ring_allgatherv(ctx, out, blocks); });
}

void Runtime::reducescatter(const TensorRef& in, void* out, ReduceOp op) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  Request request{OpKind::kReducescatter, in.name, in.dtype, op, 0, in.shape, 1.0, 1.0,
                  in.invalid_reason};
  if (request.invalid_reason.empty() && in.shape.empty()) {
    request.invalid_reason = "reducescatter needs at least one dimension (got a scalar)";
  } else if (request.invalid_reason.empty() && !reduction_supported(in.dtype, op)) {
    request.invalid_reason = std::string(reduce_op_name(op)) + " is not supported for dtype " +
                             dtype_name(in.dtype) + " (bool supports Min and Max)";
  }
  negotiate(request);
  const size_t row = in.row_count();
  std::vector<size_t> block_counts = even_blocks(static_cast<size_t>(in.shape[0]), options_.size);
  for (auto& block : block_counts) block *= row;
  CollectiveContext ctx = next_context();
  io(context("reducescatter", in.name),
     [&] { ring_reduce_scatter(ctx, in.data, out, block_counts, in.dtype, op); });
  if (op == ReduceOp::kAverage)
    divide_by(out, block_counts[options_.rank], in.dtype, options_.size);
}

std::vector<int64_t> Runtime::alltoall_sizes(const TensorRef& in,
                                             const std::vector<int64_t>& splits) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  Request request{OpKind::kAlltoall, in.name, in.dtype, ReduceOp::kSum,   0,
                  in.shape,          1.0,     1.0,      in.invalid_reason};
  if (request.invalid_reason.empty() && in.shape.empty()) {
    request.invalid_reason = "alltoall needs at least one dimension (got a scalar)";
  }
  if (request.invalid_reason.empty() && splits.size() != static_cast<size_t>(options_.size)) {
    request.invalid_reason = "splits has " + std::to_string(splits.size()) +
                             " entries, expected one per rank (" + std::to_string(options_.size) +
                             ")";
  }
  negotiate(request);
  // Every rank tells every other how many rows it will send: an alltoall of one int64 each.
  std::vector<int64_t> recv_splits(options_.size, 0);
  std::vector<size_t> eight(options_.size, sizeof(int64_t));
  CollectiveContext ctx = next_context();
  io(context("alltoall", in.name) + " (exchanging splits)",
     [&] { pairwise_alltoall(ctx, splits.data(), eight, recv_splits.data(), eight); });
  return recv_splits;
}

void Runtime::alltoall(const TensorRef& in, const std::vector<int64_t>& splits,
                       const std::vector<int64_t>& recv_splits, void* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  RF_CHECK(splits.size() == static_cast<size_t>(options_.size) &&
               recv_splits.size() == static_cast<size_t>(options_.size),
           kInvalidArgument)
      << context("alltoall", in.name) << ": splits must have one entry per rank";
  const size_t row_bytes = in.row_count() * dtype_size(in.dtype);
  CollectiveContext ctx = next_context();
  io(context("alltoall", in.name), [&] {
    pairwise_alltoall(ctx, in.data, rows_to_bytes(splits, row_bytes), out,
                      rows_to_bytes(recv_splits, row_bytes));
  });
}

void Runtime::barrier() {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  Request request;
  request.kind = OpKind::kBarrier;
  request.name = "barrier";
  negotiate(request);
  CollectiveContext ctx = next_context();
  io("rank " + std::to_string(options_.rank) + ": barrier", [&] { dissemination_barrier(ctx); });
}

void Runtime::send(const TensorRef& tensor, int dst) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  const std::string what = "rank " + std::to_string(options_.rank) + ": send of tensor '" +
                           tensor.name + "' to rank " + std::to_string(dst);
  RF_CHECK(tensor.invalid_reason.empty(), kInvalidArgument)
      << what << ": " << tensor.invalid_reason;
  RF_CHECK(dst >= 0 && dst < options_.size && dst != options_.rank, kInvalidArgument)
      << what << ": destination must be another rank in [0, " << options_.size << ")";
  const uint64_t tag = kPointToPointBit | sends_to_[dst]++;
  io(what, [&] {
    transport_->post_send(dst, tensor.data, tensor.bytes(), tag);
    transport_->wait_all(Deadline::after_seconds(options_.timeout_s));
  });
}

void Runtime::recv(const TensorRef& tensor, int src) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_usable();
  const std::string what = "rank " + std::to_string(options_.rank) + ": recv of tensor '" +
                           tensor.name + "' from rank " + std::to_string(src);
  RF_CHECK(tensor.invalid_reason.empty(), kInvalidArgument)
      << what << ": " << tensor.invalid_reason;
  RF_CHECK(src >= 0 && src < options_.size && src != options_.rank, kInvalidArgument)
      << what << ": source must be another rank in [0, " << options_.size << ")";
  const uint64_t tag = kPointToPointBit | recvs_from_[src]++;
  size_t actual = 0;
  io(what, [&] {
    transport_->post_recv(src, tensor.data, tensor.bytes(), tag, &actual);
    transport_->wait_all(Deadline::after_seconds(options_.timeout_s));
  });
  RF_CHECK(actual == tensor.bytes(), kMismatch)
      << what << ": rank " << src << " sent " << actual << " bytes but the receive buffer holds "
      << tensor.bytes() << " bytes (the message was discarded)";
}

}  // namespace rf
