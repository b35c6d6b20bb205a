// The only file that knows Python: translates between pybind11 and the core. Buffers arrive as
// raw addresses from ringflow._arrays (which keeps the owning objects alive for the call);
// every call that may block releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "ringflow/bindings/exceptions.h"
#include "ringflow/bindings/fast_allreduce.h"
#include "ringflow/common/dtype.h"
#include "ringflow/common/error.h"
#include "ringflow/cuda/device.h"
#include "ringflow/cuda/kernel_call.h"  // the test-only CUDA block at the end
#include "ringflow/engine/engine.h"
#include "ringflow/net/handshake.h"
#include "ringflow/net/socket.h"
#include "ringflow/reduce/reduce.h"
#include "ringflow/store/tcp_store_client.h"
#include "ringflow/store/tcp_store_server.h"
#include "ringflow/testing/frame_probe.h"  // test-only block at the end

namespace py = pybind11;

namespace {

using rf::DType;
using rf::ReduceOp;

// A tensor as ringflow._arrays describes it: a C-contiguous host or CUDA buffer, or the reason
// it cannot be used (the other ranks are then told instead of left waiting).
struct TensorRef {
  void* data = nullptr;
  int device = -1;         // CUDA device of `data`; -1: host memory
  void* stream = nullptr;  // CUDA: the caller's stream, which orders our copies
  DType dtype = DType::kUInt8;
  std::vector<int64_t> shape;
  std::string name;
  std::string invalid_reason;

  size_t count() const {
    size_t total = 1;
    for (int64_t dim : shape) total *= static_cast<size_t>(dim);
    return total;
  }
  size_t bytes() const { return count() * rf::dtype_size(dtype); }
};

// The numpy array is only read here, with the GIL held: its address and shape. ringflow._arrays
// has already checked dtype, contiguity and writability (or set invalid_reason).
TensorRef make_tensor(const py::array& array, DType dtype, std::string name,
                      std::string invalid_reason) {
  TensorRef tensor;
  tensor.data = const_cast<void*>(array.data());
  tensor.dtype = dtype;
  tensor.shape.assign(array.shape(), array.shape() + array.ndim());
  tensor.name = std::move(name);
  tensor.invalid_reason = std::move(invalid_reason);
  return tensor;
}

// A CUDA buffer given by address (ringflow._device has checked it is C-contiguous).
TensorRef make_device_tensor(uintptr_t address, int device, uintptr_t stream, DType dtype,
                             std::vector<int64_t> shape, std::string name) {
  TensorRef tensor;
  tensor.data = reinterpret_cast<void*>(address);
  tensor.device = device;
  tensor.stream = reinterpret_cast<void*>(stream);
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  tensor.name = std::move(name);
  return tensor;
}

void* address_of(const py::array& array) { return const_cast<void*>(array.data()); }

// The raw _core calls are public: an output buffer must be writable and exactly as large as the
// operation will write (ringflow's Python layer always allocates it so). Not checked for an
// invalid tensor, whose operation fails in negotiation before any output is touched.
void* output_of(const TensorRef& tensor, const py::array& out, size_t bytes) {
  if (!tensor.invalid_reason.empty()) return address_of(out);
  if (!out.writeable() || static_cast<size_t>(out.nbytes()) != bytes ||
      !(out.flags() & py::array::c_style)) {
    throw rf::Error(rf::ErrorKind::kInvalidArgument,
                    "output array for tensor '" + tensor.name + "' must be a writable, " +
                        "C-contiguous array of " + std::to_string(bytes) + " bytes (got " +
                        std::to_string(out.nbytes()) + ")");
  }
  return address_of(out);
}

std::unique_ptr<rf::Engine> make_engine(int rank, int size, int local_rank, int local_size,
                                        const std::string& store_host, int store_port,
                                        bool host_store, const py::bytes& secret,
                                        const std::string& job_id, uint32_t used_store,
                                        double timeout_s) {
  rf::RuntimeOptions options;
  options.rank = rank;
  options.size = size;
  options.local_rank = local_rank;
  options.local_size = local_size;
  options.store_host = store_host;
  options.store_port = store_port;
  options.host_store = host_store;
  options.secret = std::string(secret);
  options.job_id = job_id;
  options.used_store = used_store;
  options.timeout_s = timeout_s;
  py::gil_scoped_release release;  // the rendezvous waits for every other rank
  return std::make_unique<rf::Engine>(options);
}

// The submission of one tensor (moved from), with what only this rank can tell is wrong as its
// invalid_reason; `out` is its output array for allreduce / reducescatter (checked here: the
// raw calls are public), None otherwise.
rf::Submission submission_of(rf::Engine& engine, rf::OpKind kind, TensorRef&& tensor,
                             const py::handle& out, ReduceOp op, int root, int peer,
                             double prescale, double postscale, int process_set,
                             const std::vector<int64_t>& splits, const std::vector<int>& set_ranks,
                             uint64_t group_hash, uint32_t group_size) {
  rf::Submission s;
  rf::Request& r = s.request;
  r.kind = kind;
  r.dtype = tensor.dtype;
  r.op = op;
  r.root = root;
  r.peer = peer;
  r.process_set = process_set;
  r.prescale = prescale;
  r.postscale = postscale;
  r.invalid_reason = tensor.invalid_reason;
  r.group_hash = group_hash;
  r.group_size = group_size;
  if (r.invalid_reason.empty() &&
      (kind == rf::OpKind::kAllreduce || kind == rf::OpKind::kReducescatter) &&
      !rf::reduction_supported(tensor.dtype, op)) {
    r.invalid_reason = std::string(rf::reduce_op_name(op)) + " is not supported for dtype " +
                       rf::dtype_name(tensor.dtype) + " (bool supports Min and Max)";
  }
  if (r.invalid_reason.empty() && tensor.shape.empty() &&
      (kind == rf::OpKind::kAllgather || kind == rf::OpKind::kReducescatter ||
       kind == rf::OpKind::kAlltoall)) {
    r.invalid_reason =
        std::string(rf::op_kind_name(kind)) + " needs at least one dimension (got a scalar)";
  }
  s.in = tensor.data;
  s.out = tensor.data;
  if (!out.is_none() && tensor.invalid_reason.empty()) {
    const size_t rows = tensor.shape.empty() ? 0 : static_cast<size_t>(tensor.shape[0]);
    size_t bytes = tensor.bytes();
    if (kind == rf::OpKind::kReducescatter && rows > 0) {
      const auto members = engine.process_set_ranks(process_set);
      const size_t world = members.size();
      const size_t me = static_cast<size_t>(
          std::find(members.begin(), members.end(), engine.rank()) - members.begin());
      bytes = bytes / rows * (rows / world + (me < rows % world ? 1 : 0));
    }
    if (tensor.device >= 0) {  // a CUDA output, by address, as large as the Python layer made
      s.out = reinterpret_cast<void*>(out.cast<uintptr_t>());
      s.device.out_bytes = bytes;
    } else {
      s.out = output_of(tensor, out.cast<py::array>(), bytes);
    }
  }
  if (tensor.device >= 0) {  // the engine stages it through pinned host memory
    s.device.device = tensor.device;
    s.device.stream = tensor.stream;
    s.device.in = s.in;
    s.device.out = out.is_none() ? (kind == rf::OpKind::kAllreduce ? s.in : nullptr) : s.out;
    if (s.device.out == s.in) s.device.out_bytes = tensor.bytes();
    s.in = nullptr;
    s.out = nullptr;
  }
  if (kind == rf::OpKind::kAlltoall) {
    s.splits = splits;
    int64_t total = 0;
    for (int64_t v : splits) total += v;
    const int64_t rows = tensor.shape.empty() ? 0 : tensor.shape[0];
    bool negative = false;
    for (int64_t v : splits) negative = negative || v < 0;
    if (r.invalid_reason.empty() && (negative || total != rows)) {
      r.invalid_reason =
          "splits must be non-negative and add up to the first dimension " + std::to_string(rows);
    }
  }
  s.set_ranks = set_ranks;
  r.name = std::move(tensor.name);
  r.shape = std::move(tensor.shape);
  return s;
}

// One submission per tensor; `outs[i]` is the output array for allreduce / reducescatter and
// None otherwise.
std::vector<rf::HandlePtr> submit(rf::Engine& engine, rf::OpKind kind,
                                  std::vector<TensorRef> tensors, const py::list& outs, ReduceOp op,
                                  int root, int peer, double prescale, double postscale,
                                  int process_set, const std::vector<int64_t>& splits,
                                  const std::vector<int>& set_ranks, const std::string& group,
                                  bool synchronous) {
  const uint64_t group_hash = group.empty() ? 0 : rf::name_hash(group);
  const uint32_t group_size = group.empty() ? 0 : static_cast<uint32_t>(tensors.size());
  std::vector<rf::Submission> batch;
  for (size_t i = 0; i < tensors.size(); ++i) {
    batch.push_back(submission_of(engine, kind, std::move(tensors[i]), outs[i], op, root, peer,
                                  prescale, postscale, process_set, splits, set_ranks, group_hash,
                                  group_size));
  }
  return engine.submit(std::move(batch), synchronous);
}

// submit() + wait + rethrow for the commonest call, without the lists and handles that cross
// into Python on the general path (a few microseconds of an 8-byte allreduce).
void allreduce_now(rf::Engine& engine, const py::array& array, DType dtype, std::string name,
                   const py::object& out, ReduceOp op, double prescale, double postscale) {
  std::vector<rf::Submission> batch;
  batch.push_back(submission_of(engine, rf::OpKind::kAllreduce,
                                make_tensor(array, dtype, std::move(name), ""), out, op, 0, 0,
                                prescale, postscale, 0, {}, {}, 0, 0));
  const std::vector<rf::HandlePtr> handles = engine.submit(std::move(batch), true);
  {
    py::gil_scoped_release release;
    engine.wait(handles[0]);
  }
  handles[0]->rethrow();
}

// The engine-allocated output of an allgather / alltoall, as a numpy array that owns it.
py::array take_output(rf::Handle& handle, const py::dtype& dtype) {
  size_t elements = 1;
  for (int64_t dim : handle.output_shape) elements *= static_cast<size_t>(dim);
  if (!handle.done() || !handle.output.data ||
      elements * static_cast<size_t>(dtype.itemsize()) != handle.output.bytes) {
    throw rf::Error(rf::ErrorKind::kInvalidArgument,
                    "take_output: the handle holds no finished output of that dtype (taken "
                    "already, not done, or not an allgather/alltoall)");
  }
  auto* owned = new std::unique_ptr<char[]>(std::move(handle.output.data));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::unique_ptr<char[]>*>(p); });
  return py::array(dtype, handle.output_shape, owned->get(), owner);
}

void probe_handshake(const std::string& host, int port, const std::string& secret,
                     const std::string& job_id, int rank, double timeout_s) {
  auto deadline = rf::Deadline::after_seconds(timeout_s);
  rf::UniqueFd fd = rf::net::connect_tcp(rf::net::Endpoint{host, port}, deadline);
  rf::net::Identity me{rf::net::Role::kPeer, rank, 0, job_id};
  auto result = rf::net::handshake(fd.get(), me, rf::net::Role::kPeer, secret, nullptr, deadline);
  if (result.verdict != rf::net::Verdict::kAccepted) {
    throw rf::Error(
        rf::ErrorKind::kPeerFailure,
        "handshake with " + host + ":" + std::to_string(port) + " refused: " + result.reason);
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "ringflow's C++ core (internal: use the ringflow package)";
  register_exceptions(m);
  register_fast_allreduce(m, &allreduce_now);

  py::enum_<DType>(m, "DType")
      .value("uint8", DType::kUInt8)
      .value("int8", DType::kInt8)
      .value("int16", DType::kInt16)
      .value("int32", DType::kInt32)
      .value("int64", DType::kInt64)
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16)
      .value("float32", DType::kFloat32)
      .value("float64", DType::kFloat64)
      .value("bool", DType::kBool);
  py::enum_<ReduceOp>(m, "ReduceOp")
      .value("Sum", ReduceOp::kSum)
      .value("Average", ReduceOp::kAverage)
      .value("Min", ReduceOp::kMin)
      .value("Max", ReduceOp::kMax)
      .value("Product", ReduceOp::kProduct);

  m.def("dtype_size", &rf::dtype_size, py::arg("dtype"));
  m.def(
      "reduce",
      [](const py::array& a, const py::array& b, const py::array& out, DType dtype, ReduceOp op) {
        const size_t bytes = static_cast<size_t>(out.nbytes());
        if (static_cast<size_t>(a.nbytes()) != bytes || static_cast<size_t>(b.nbytes()) != bytes ||
            bytes % rf::dtype_size(dtype) != 0) {
          throw rf::Error(rf::ErrorKind::kInvalidArgument,
                          "reduce: a, b and out must hold the same number of elements");
        }
        const void* pa = a.data();
        const void* pb = b.data();
        void* pout = address_of(out);
        py::gil_scoped_release release;
        rf::reduce(pa, pb, pout, bytes / rf::dtype_size(dtype), dtype, op);
      },
      py::arg("a"), py::arg("b"), py::arg("out"), py::arg("dtype"), py::arg("op"),
      "out = a (op) b elementwise with the collectives' kernels (for benchmarks and tests; "
      "arrays must be C-contiguous).");
  m.def("reduce_kernel_isa", &rf::reduce_kernel_isa,
        "Which build of the reduction kernels runs on this CPU.");
  m.def("cuda_built", &rf::cuda::built, "Whether this build contains the CUDA parts.");
  m.def(
      "cuda_device_of",
      [](uintptr_t address) { return rf::cuda::device_of(reinterpret_cast<const void*>(address)); },
      py::arg("address"), "The CUDA device an address belongs to, -1 for host memory.");

  py::class_<TensorRef>(m, "Tensor")
      .def(py::init(&make_tensor), py::arg("array"), py::arg("dtype"), py::arg("name"),
           py::arg("invalid") = "")
      .def_static("cuda", &make_device_tensor, py::arg("address"), py::arg("device"),
                  py::arg("stream"), py::arg("dtype"), py::arg("shape"), py::arg("name"),
                  "A C-contiguous CUDA buffer; `stream` orders ringflow's copies after the "
                  "caller's pending work and before what the caller queues after synchronize.")
      .def_readonly("device", &TensorRef::device)
      .def_readonly("name", &TensorRef::name)
      .def_readonly("dtype", &TensorRef::dtype)
      .def_readonly("shape", &TensorRef::shape);

  py::enum_<rf::OpKind>(m, "OpKind")
      .value("allreduce", rf::OpKind::kAllreduce)
      .value("broadcast", rf::OpKind::kBroadcast)
      .value("allgather", rf::OpKind::kAllgather)
      .value("reducescatter", rf::OpKind::kReducescatter)
      .value("alltoall", rf::OpKind::kAlltoall)
      .value("barrier", rf::OpKind::kBarrier)
      .value("point_to_point", rf::OpKind::kPointToPoint)
      .value("add_process_set", rf::OpKind::kAddProcessSet)
      .value("remove_process_set", rf::OpKind::kRemoveProcessSet)
      .value("join", rf::OpKind::kJoin);

  py::class_<rf::Handle, rf::HandlePtr>(m, "Handle")
      .def("done", &rf::Handle::done)
      .def("rethrow", &rf::Handle::rethrow)
      .def("take_output", &take_output, py::arg("dtype"))
      .def_readonly("received_splits", &rf::Handle::received_splits)
      .def_readonly("value", &rf::Handle::value);

  using Release = py::call_guard<py::gil_scoped_release>;
  py::class_<rf::Engine>(m, "Engine")
      .def(py::init(&make_engine), py::arg("rank"), py::arg("size"), py::arg("local_rank"),
           py::arg("local_size"), py::arg("store_host"), py::arg("store_port"),
           py::arg("host_store"), py::arg("secret"), py::arg("job_id"), py::arg("used_store"),
           py::arg("timeout_s"))
      .def("close", &rf::Engine::close, Release(),
           "Stop the engine and close every connection; pending and later calls raise.")
      .def_property_readonly("rank", &rf::Engine::rank)
      .def_property_readonly("size", &rf::Engine::size)
      .def_property_readonly("generation", &rf::Engine::generation)
      .def_property_readonly("store_instance", &rf::Engine::store_instance)
      .def_property_readonly("local_rank",
                             [](const rf::Engine& e) { return e.topology().local_rank; })
      .def_property_readonly("local_size",
                             [](const rf::Engine& e) { return e.topology().local_size; })
      .def_property_readonly("cross_rank",
                             [](const rf::Engine& e) { return e.topology().cross_rank; })
      .def_property_readonly("cross_size",
                             [](const rf::Engine& e) { return e.topology().cross_size; })
      .def("peer_transports", &rf::Engine::peer_transports,
           "Per rank: \"shm\", \"tcp\" or \"self\".")
      .def("submit", &submit, py::arg("kind"), py::arg("tensors"), py::arg("outs"),
           py::arg("op") = ReduceOp::kSum, py::arg("root") = 0, py::arg("peer") = 0,
           py::arg("prescale") = 1.0, py::arg("postscale") = 1.0, py::arg("process_set") = 0,
           py::arg("splits") = std::vector<int64_t>{}, py::arg("set_ranks") = std::vector<int>{},
           py::arg("group") = "", py::arg("synchronous") = false,
           "Queue one request per tensor (a group when `group` is named); returns handles.")
      .def("wait", &rf::Engine::wait, py::arg("handle"), Release(),
           "Block until the handle is done (driving the engine meanwhile).")
      .def("allreduce_now", &allreduce_now, py::arg("array"), py::arg("dtype"), py::arg("name"),
           py::arg("out"), py::arg("op"), py::arg("prescale"), py::arg("postscale"),
           "One blocking allreduce of a checked host array on the global set: submit, wait "
           "and rethrow in one call (ringflow._allreduce's fast path).")
      .def("process_set_ranks", &rf::Engine::process_set_ranks, py::arg("process_set"))
      .def("next_send_name", &rf::Engine::next_send_name, py::arg("dst"))
      .def("next_recv_name", &rf::Engine::next_recv_name, py::arg("src"))
      .def(
          "start_timeline", [](rf::Engine& e, const std::string& path) { e.start_timeline(path); },
          py::arg("path"))
      .def("stop_timeline", &rf::Engine::stop_timeline)
      .def("flight_recorder_json", &rf::Engine::flight_recorder_json)
      .def("stats", [](rf::Engine& e) {
        rf::EngineStats s = e.stats();
        py::dict d;
        d["rounds"] = s.rounds;
        d["negotiation_bytes"] = s.negotiation_bytes;
        d["cache_hits"] = s.cache_hits;
        d["responses"] = s.responses;
        d["inline_allreduces"] = s.inline_allreduces;
        d["fused_ops"] = s.fused_ops;
        d["fused_tensors"] = s.fused_tensors;
        d["direct_allreduces"] = s.direct_allreduces;
        d["direct_gathers"] = s.direct_gathers;
        return d;
      });

  py::class_<rf::TcpStoreServer>(m, "StoreServer")
      .def(py::init([](const std::string& host, int port, const py::bytes& secret,
                       const std::string& job_id) {
             rf::StoreServerOptions options;
             options.host = host;
             options.port = port;
             options.secret = std::string(secret);
             options.job_id = job_id;
             return std::make_unique<rf::TcpStoreServer>(options);
           }),
           py::arg("host") = "127.0.0.1", py::arg("port") = 0, py::arg("secret"), py::arg("job_id"))
      .def_property_readonly("port", &rf::TcpStoreServer::port)
      .def("close", &rf::TcpStoreServer::close, py::call_guard<py::gil_scoped_release>());

  py::class_<rf::TcpStoreClient>(m, "StoreClient")
      .def(py::init([](const std::string& host, int port, const py::bytes& secret,
                       const std::string& job_id, double timeout_s) {
             rf::StoreClientOptions options;
             options.server = rf::net::Endpoint{host, port};
             options.secret = std::string(secret);
             options.job_id = job_id;
             options.timeout_s = timeout_s;
             py::gil_scoped_release release;
             return std::make_unique<rf::TcpStoreClient>(options,
                                                         rf::Deadline::after_seconds(timeout_s));
           }),
           py::arg("host"), py::arg("port"), py::arg("secret"), py::arg("job_id"),
           py::arg("timeout_s") = 30.0)
      .def(
          "set",
          [](rf::TcpStoreClient& self, const std::string& key, const py::bytes& value) {
            std::string bytes(value);
            py::gil_scoped_release release;
            self.set(key, bytes);
          },
          py::arg("key"), py::arg("value"))
      .def(
          "get",
          [](rf::TcpStoreClient& self, const std::string& key, std::optional<double> timeout_s) {
            std::string value;
            {
              py::gil_scoped_release release;
              value =
                  self.get(key, rf::Deadline::after_seconds(timeout_s.value_or(self.timeout_s())));
            }
            return py::bytes(value);
          },
          py::arg("key"), py::arg("timeout_s") = py::none())
      .def("add", &rf::TcpStoreClient::add, py::arg("key"), py::arg("delta"),
           py::call_guard<py::gil_scoped_release>())
      .def(
          "wait",
          [](rf::TcpStoreClient& self, const std::vector<std::string>& keys,
             std::optional<double> timeout_s) {
            py::gil_scoped_release release;
            self.wait(keys, rf::Deadline::after_seconds(timeout_s.value_or(self.timeout_s())));
          },
          py::arg("keys"), py::arg("timeout_s") = py::none())
      .def("close", &rf::TcpStoreClient::close);

  m.def(
      "probe_handshake",
      [](const std::string& host, int port, const py::bytes& secret, const std::string& job_id,
         int rank, double timeout_s) {
        std::string key(secret);
        py::gil_scoped_release release;
        probe_handshake(host, port, key, job_id, rank, timeout_s);
      },
      py::arg("host"), py::arg("port"), py::arg("secret"), py::arg("job_id"), py::arg("rank"),
      py::arg("timeout_s") = 10.0,
      "Performs the peer handshake against a data port; raises ringflow.Error if refused.");
  // --- Test-only (issue 14, the device check): pinned staging against plain copies. ---
  m.def(
      "_cuda_staging_times",
      [](int device, uintptr_t address, size_t bytes, int iterations) {
        rf::StagingTimes times;
        {
          py::gil_scoped_release release;
          times = rf::time_staging(device, reinterpret_cast<void*>(address), bytes, iterations);
        }
        py::dict out;
        out["memcpy_d2h_s"] = times.memcpy_d2h_s;
        out["memcpy_h2d_s"] = times.memcpy_h2d_s;
        out["staged_round_trip_s"] = times.staged_round_trip_s;
        return out;
      },
      py::arg("device"), py::arg("address"), py::arg("bytes"), py::arg("iterations") = 10,
      "Seconds per copy of a device buffer to pinned memory and back, plain and staged.");
  // --- Test-only (issue 6, hostile input): the real TcpPair fed raw bytes. Not public API. ---
  m.def(
      "_probe_frames",
      [](const py::bytes& data, const std::vector<std::tuple<size_t, uint64_t, bool>>& recvs,
         int peer, const std::string& transport) {
        std::vector<rf::testing::ProbeRecv> specs;
        for (const auto& [len, tag, variable] : recvs) specs.push_back({len, tag, variable});
        std::string bytes(data);
        rf::testing::ProbeResult result;
        {
          py::gil_scoped_release release;
          result = transport == "shm" ? rf::testing::probe_shm_frames(bytes, specs, peer)
                                      : rf::testing::probe_frames(bytes, specs, peer);
        }
        py::list buffers;
        for (const auto& buffer : result.buffers) buffers.append(py::bytes(buffer));
        py::dict out;
        out["completed"] = result.completed;
        out["buffers"] = buffers;
        out["actual_lens"] = result.actual_lens;
        out["error_kind"] = !result.failed                               ? "none"
                            : result.kind == rf::ErrorKind::kPeerFailure ? "peer_failure"
                            : result.kind == rf::ErrorKind::kTimeout     ? "timeout"
                                                                         : "other";
        out["error"] = result.message;
        return out;
      },
      py::arg("data"), py::arg("recvs"), py::arg("peer"), py::arg("transport") = "tcp",
      "Feeds data to a TcpPair (or ShmPair) from `peer` and runs receives (len, tag, "
      "variable_len): test-only.");

  // --- CUDA (issue 14): device queries; the kernels (on device addresses) and their host
  // references (on host addresses) for tests/test_cuda_kernels_reference.py and
  // tools/device_check/kernels.py. Addresses are ints; nothing checks that they are valid. ---
  m.def("cuda_device_count", &rf::cuda::device_count,
        "GPUs this process can use; 0 without a driver or a GPU.");
  m.def("cuda_available", &rf::cuda::available, "Whether CUDA is built and a GPU is usable.");
  using Region = std::tuple<uintptr_t, uintptr_t, size_t>;
  for (bool on_device : {false, true}) {
    m.def(
        on_device ? "_cuda_kernel" : "_cuda_reference",
        [on_device](const std::string& name, uintptr_t dst, const std::vector<uintptr_t>& srcs,
                    size_t count, DType dtype, ReduceOp op, double factor, int64_t divisor,
                    std::optional<DType> src_dtype, const std::vector<Region>& regions,
                    uintptr_t stream, bool synchronize) {
          rf::cuda::KernelCall call{name,
                                    reinterpret_cast<void*>(dst),
                                    {},
                                    count,
                                    dtype,
                                    op,
                                    factor,
                                    divisor,
                                    src_dtype,
                                    {},
                                    reinterpret_cast<void*>(stream),
                                    synchronize};
          for (uintptr_t src : srcs) call.srcs.push_back(reinterpret_cast<const void*>(src));
          for (const auto& [to, from, bytes] : regions) {
            call.regions.push_back(
                {reinterpret_cast<void*>(to), reinterpret_cast<const void*>(from), bytes});
          }
          py::gil_scoped_release release;
          rf::cuda::run_kernel_call(call, on_device);
        },
        py::arg("name"), py::arg("dst") = 0, py::arg("srcs") = std::vector<uintptr_t>{},
        py::arg("count") = 0, py::arg("dtype") = DType::kFloat32, py::arg("op") = ReduceOp::kSum,
        py::arg("factor") = 1.0, py::arg("divisor") = 1, py::arg("src_dtype") = py::none(),
        py::arg("regions") = std::vector<Region>{}, py::arg("stream") = 0,
        py::arg("synchronize") = true,
        on_device ? "CUDA kernel `name` on device addresses, on `stream`; waits for it unless "
                    "synchronize=False (test-only)."
                  : "Host reference of CUDA kernel `name` on host addresses (test-only; stream "
                    "and synchronize are ignored).");
  }
}
