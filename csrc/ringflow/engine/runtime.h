// One initialised ringflow process: the store connection (and the store itself on rank 0 when
// no launcher hosts it), the mesh of peer connections, and the collectives run over it.
// Owned by whoever called init() — no process-global state — so a test can build several.
//
// Every public call takes the runtime's lock, validates, negotiates with the other ranks, then
// runs the chosen algorithm with a deadline. An I/O failure or timeout poisons the runtime:
// peers are told why, and every later call raises the first error.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ringflow/common/dtype.h"
#include "ringflow/common/error.h"
#include "ringflow/engine/negotiation.h"
#include "ringflow/store/tcp_store_client.h"
#include "ringflow/store/tcp_store_server.h"
#include "ringflow/transport/rendezvous.h"

namespace rf {

struct RuntimeOptions {
  int rank = 0;
  int size = 1;
  int local_rank = -1;  // -1: work it out from host identities
  int local_size = -1;
  std::string store_host = "127.0.0.1";
  int store_port = 0;
  bool host_store = false;  // rank 0 hosts the store at store_host:store_port
  std::string secret;
  std::string job_id;
  uint32_t generation = 0;
  double timeout_s = 300.0;
};

// A tensor as the core sees it: a C-contiguous host buffer. `invalid_reason` is set by the
// caller when the input cannot be used; the other ranks are then told instead of left waiting.
struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::kUInt8;
  std::vector<int64_t> shape;
  std::string name;
  std::string invalid_reason;

  size_t count() const;
  size_t bytes() const { return count() * dtype_size(dtype); }
  size_t row_count() const;  // elements per index of the first dimension
};

class Runtime {
 public:
  explicit Runtime(const RuntimeOptions& options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Closes every connection (and the store this rank hosts); later calls raise. Idempotent;
  // shutdown() calls it so that lingering Python references cannot keep a job's ports open.
  void close();

  int rank() const { return options_.rank; }
  int size() const { return options_.size; }
  const Topology& topology() const { return topology_; }

  // out may be in.data (in place). Average divides by size; scale factors as documented.
  void allreduce(const TensorRef& in, void* out, ReduceOp op, double prescale, double postscale);
  void broadcast(const TensorRef& buffer, int root);
  // Two phases so the caller can allocate the output: first every rank's first dimension…
  std::vector<int64_t> allgather_sizes(const TensorRef& in);
  // …then the data, into out (sum of first dims × row elements).
  void allgather(const TensorRef& in, const std::vector<int64_t>& first_dims, void* out);
  // out receives this rank's block of the first dimension (np.array_split blocks).
  void reducescatter(const TensorRef& in, void* out, ReduceOp op);
  // Returns how many rows each rank will send here; then alltoall() moves them.
  std::vector<int64_t> alltoall_sizes(const TensorRef& in, const std::vector<int64_t>& splits);
  void alltoall(const TensorRef& in, const std::vector<int64_t>& splits,
                const std::vector<int64_t>& recv_splits, void* out);
  void barrier();
  void send(const TensorRef& tensor, int dst);
  void recv(const TensorRef& tensor, int src);

 private:
  void join();  // rendezvous: store, mesh of connections, topology, a first barrier
  CollectiveContext next_context();
  void check_usable() const;
  // Runs fn (which moves bytes); an error poisons the runtime and is rethrown with context.
  template <typename Fn>
  void io(const std::string& what, Fn&& fn);
  [[noreturn]] void fail(const Error& failure);
  Negotiated negotiate(const Request& request);
  // The two allreduce algorithms, after validation (see collectives/select.cc).
  void allreduce_bruck(Request& request, const TensorRef& in, void* out,
                       const ChunkFinisher& finish);
  void allreduce_ring(const Request& request, const TensorRef& in, void* out,
                      const ChunkFinisher& finish);
  std::string context(const char* op, const std::string& name) const;

  RuntimeOptions options_;
  std::unique_ptr<TcpStoreServer> store_server_;
  std::unique_ptr<TcpStoreClient> store_;
  std::unique_ptr<Transport> transport_;
  Topology topology_;

  std::mutex mutex_;  // one operation at a time; callers may come from several threads
  uint64_t next_tag_ = 1;
  std::vector<uint64_t> sends_to_;  // point-to-point counters per peer
  std::vector<uint64_t> recvs_from_;
  std::optional<Error> broken_;
  bool closed_ = false;
};

}  // namespace rf
