// ringflow's Python exception classes and the translation of rf::Error into them.
#include "ringflow/bindings/exceptions.h"

#include <string>

#include "ringflow/common/error.h"

namespace py = pybind11;

// Exception classes, created once at import; subclasses also derive from the matching
// built-in so `except TimeoutError` and `except ConnectionError` work as users expect.
namespace {

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

}  // namespace

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
      set_python_error(error);
    }
  });
}

void set_python_error(const rf::Error& error) {
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
