// The only file that knows Python: translates between pybind11 and the core. Buffers arrive as
// raw addresses from ringflow._arrays (which keeps the owning objects alive for the call);
// every call that may block releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "ringflow/common/dtype.h"
#include "ringflow/common/error.h"
#include "ringflow/engine/runtime.h"
#include "ringflow/net/handshake.h"
#include "ringflow/net/socket.h"
#include "ringflow/reduce/reduce.h"
#include "ringflow/store/tcp_store_client.h"
#include "ringflow/store/tcp_store_server.h"

namespace py = pybind11;

namespace {

using rf::DType;
using rf::ReduceOp;

// The numpy array is only read here, with the GIL held: its address and shape. ringflow._arrays
// has already checked dtype, contiguity and writability (or set invalid_reason).
rf::TensorRef make_tensor(const py::array& array, DType dtype, std::string name,
                          std::string invalid_reason) {
  rf::TensorRef tensor;
  tensor.data = const_cast<void*>(array.data());
  tensor.dtype = dtype;
  tensor.shape.assign(array.shape(), array.shape() + array.ndim());
  tensor.name = std::move(name);
  tensor.invalid_reason = std::move(invalid_reason);
  return tensor;
}

void* address_of(const py::array& array) { return const_cast<void*>(array.data()); }

// The raw _core calls are public: an output buffer must be writable and exactly as large as the
// operation will write (ringflow's Python layer always allocates it so). Not checked for an
// invalid tensor, whose operation fails in negotiation before any output is touched.
void* output_of(const rf::TensorRef& tensor, const py::array& out, size_t bytes) {
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

size_t rows_bytes(const rf::TensorRef& tensor, const std::vector<int64_t>& rows) {
  size_t total = 0;
  for (int64_t r : rows) {
    if (r < 0) throw rf::Error(rf::ErrorKind::kInvalidArgument, "negative row count");
    total += static_cast<size_t>(r);
  }
  return total * tensor.row_count() * rf::dtype_size(tensor.dtype);
}

// Exception classes, created once at import; subclasses also derive from the matching
// built-in so `except TimeoutError` and `except ConnectionError` work as users expect.
struct Exceptions {
  PyObject* base = nullptr;
  PyObject* invalid_argument = nullptr;
  PyObject* mismatch = nullptr;
  PyObject* timeout = nullptr;
  PyObject* peer_failure = nullptr;
};
Exceptions exceptions;

PyObject* new_exception(py::module_& m, const char* name, PyObject* bases, const char* doc) {
  std::string qualified = std::string("ringflow._core.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (!type) throw py::error_already_set();
  m.add_object(name, py::handle(type));
  return type;
}

void register_exceptions(py::module_& m) {
  exceptions.base =
      new_exception(m, "Error", PyExc_RuntimeError, "Base class of every ringflow error.");
  auto bases = [](PyObject* builtin) {
    return py::make_tuple(py::handle(exceptions.base), py::handle(builtin)).release().ptr();
  };
  exceptions.invalid_argument =
      new_exception(m, "InvalidArgumentError", bases(PyExc_ValueError),
                    "Bad input from the caller, rejected before any data moved.");
  exceptions.mismatch =
      new_exception(m, "MismatchError", exceptions.base, "Ranks disagree about an operation.");
  exceptions.timeout = new_exception(m, "TimeoutError", bases(PyExc_TimeoutError),
                                     "A deadline (RINGFLOW_TIMEOUT) expired.");
  exceptions.peer_failure = new_exception(m, "PeerFailureError", bases(PyExc_ConnectionError),
                                          "A peer died, disconnected or misbehaved.");
  py::register_exception_translator([](std::exception_ptr pointer) {
    try {
      if (pointer) std::rethrow_exception(pointer);
    } catch (const rf::Error& error) {
      PyObject* type = exceptions.base;
      switch (error.kind()) {
        case rf::ErrorKind::kInvalidArgument:
          type = exceptions.invalid_argument;
          break;
        case rf::ErrorKind::kMismatch:
          type = exceptions.mismatch;
          break;
        case rf::ErrorKind::kTimeout:
          type = exceptions.timeout;
          break;
        case rf::ErrorKind::kPeerFailure:
          type = exceptions.peer_failure;
          break;
        case rf::ErrorKind::kInternal:
          break;
      }
      PyErr_SetString(type, error.what());
    }
  });
}

std::unique_ptr<rf::Runtime> make_runtime(int rank, int size, int local_rank, int local_size,
                                          const std::string& store_host, int store_port,
                                          bool host_store, const py::bytes& secret,
                                          const std::string& job_id, uint32_t generation,
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
  options.generation = generation;
  options.timeout_s = timeout_s;
  py::gil_scoped_release release;  // the rendezvous waits for every other rank
  return std::make_unique<rf::Runtime>(options);
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

  py::enum_<DType>(m, "DType")
      .value("uint8", DType::kUInt8)
      .value("int8", DType::kInt8)
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
  m.def(
      "cuda_built", [] { return RINGFLOW_WITH_CUDA != 0; },
      "Whether this build contains the CUDA parts.");

  py::class_<rf::TensorRef>(m, "Tensor")
      .def(py::init(&make_tensor), py::arg("array"), py::arg("dtype"), py::arg("name"),
           py::arg("invalid") = "")
      .def_readonly("name", &rf::TensorRef::name)
      .def_readonly("dtype", &rf::TensorRef::dtype)
      .def_readonly("shape", &rf::TensorRef::shape);

  using Release = py::call_guard<py::gil_scoped_release>;
  py::class_<rf::Runtime>(m, "Runtime")
      .def(py::init(&make_runtime), py::arg("rank"), py::arg("size"), py::arg("local_rank"),
           py::arg("local_size"), py::arg("store_host"), py::arg("store_port"),
           py::arg("host_store"), py::arg("secret"), py::arg("job_id"), py::arg("generation"),
           py::arg("timeout_s"))
      .def("close", &rf::Runtime::close, Release(),
           "Close every connection (and the store this rank hosts); later calls raise.")
      .def_property_readonly("rank", &rf::Runtime::rank)
      .def_property_readonly("size", &rf::Runtime::size)
      .def_property_readonly("local_rank",
                             [](const rf::Runtime& r) { return r.topology().local_rank; })
      .def_property_readonly("local_size",
                             [](const rf::Runtime& r) { return r.topology().local_size; })
      .def_property_readonly("cross_rank",
                             [](const rf::Runtime& r) { return r.topology().cross_rank; })
      .def_property_readonly("cross_size",
                             [](const rf::Runtime& r) { return r.topology().cross_size; })
      .def(
          "allreduce",
          [](rf::Runtime& self, const rf::TensorRef& tensor, const py::array& out, ReduceOp op,
             double prescale, double postscale) {
            void* target = output_of(tensor, out, tensor.bytes());
            py::gil_scoped_release release;
            self.allreduce(tensor, target, op, prescale, postscale);
          },
          py::arg("tensor"), py::arg("out"), py::arg("op"), py::arg("prescale"),
          py::arg("postscale"))
      .def("broadcast", &rf::Runtime::broadcast, py::arg("tensor"), py::arg("root"), Release())
      .def("allgather_sizes", &rf::Runtime::allgather_sizes, py::arg("tensor"), Release())
      .def(
          "allgather",
          [](rf::Runtime& self, const rf::TensorRef& tensor, const std::vector<int64_t>& first_dims,
             const py::array& out) {
            void* target = output_of(tensor, out, rows_bytes(tensor, first_dims));
            py::gil_scoped_release release;
            self.allgather(tensor, first_dims, target);
          },
          py::arg("tensor"), py::arg("first_dims"), py::arg("out"))
      .def(
          "reducescatter",
          [](rf::Runtime& self, const rf::TensorRef& tensor, const py::array& out, ReduceOp op) {
            const size_t rows = tensor.shape.empty() ? 0 : static_cast<size_t>(tensor.shape[0]);
            const size_t world = static_cast<size_t>(self.size());
            const size_t rank = static_cast<size_t>(self.rank());
            const int64_t mine = static_cast<int64_t>(rows / world + (rank < rows % world));
            void* target = output_of(tensor, out, rows_bytes(tensor, {mine}));
            py::gil_scoped_release release;
            self.reducescatter(tensor, target, op);
          },
          py::arg("tensor"), py::arg("out"), py::arg("op"))
      .def("alltoall_sizes", &rf::Runtime::alltoall_sizes, py::arg("tensor"), py::arg("splits"),
           Release())
      .def(
          "alltoall",
          [](rf::Runtime& self, const rf::TensorRef& tensor, const std::vector<int64_t>& splits,
             const std::vector<int64_t>& recv_splits, const py::array& out) {
            if (rows_bytes(tensor, splits) != tensor.bytes()) {
              throw rf::Error(rf::ErrorKind::kInvalidArgument,
                              "alltoall: splits do not add up to the tensor's first dimension");
            }
            void* target = output_of(tensor, out, rows_bytes(tensor, recv_splits));
            py::gil_scoped_release release;
            self.alltoall(tensor, splits, recv_splits, target);
          },
          py::arg("tensor"), py::arg("splits"), py::arg("recv_splits"), py::arg("out"))
      .def("barrier", &rf::Runtime::barrier, Release())
      .def("send", &rf::Runtime::send, py::arg("tensor"), py::arg("dst"), Release())
      .def("recv", &rf::Runtime::recv, py::arg("tensor"), py::arg("src"), Release());

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
}
