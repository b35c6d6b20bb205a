#include "ringflow/bindings/fast_allreduce.h"

#include <exception>

#include "ringflow/bindings/exceptions.h"
#include "ringflow/common/error.h"

namespace py = pybind11;

namespace {

AllreduceNow allreduce_now = nullptr;

// float(value), as the Python layer's float(prescale) was (strings included).
double as_double(PyObject* value) {
  if (PyFloat_CheckExact(value)) return PyFloat_AS_DOUBLE(value);
  PyObject* number = PyNumber_Float(value);
  if (number == nullptr) throw py::error_already_set();
  const double result = PyFloat_AS_DOUBLE(number);
  Py_DECREF(number);
  return result;
}

PyObject* allreduce_now_fast(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  try {
    if (nargs != 8) {
      throw py::type_error(
          "allreduce_now_fast(engine, array, dtype, name, out, op, prescale, postscale)");
    }
    rf::Engine& engine = py::cast<rf::Engine&>(py::handle(args[0]));
    if (!py::isinstance<py::array>(args[1])) throw py::type_error("array: a numpy array");
    const rf::DType dtype = py::cast<rf::DType>(py::handle(args[2]));
    Py_ssize_t length = 0;
    const char* name = PyUnicode_AsUTF8AndSize(args[3], &length);
    if (name == nullptr) throw py::error_already_set();
    const rf::ReduceOp op = py::cast<rf::ReduceOp>(py::handle(args[5]));
    allreduce_now(engine, py::reinterpret_borrow<py::array>(args[1]), dtype,
                  std::string(name, static_cast<size_t>(length)),
                  py::reinterpret_borrow<py::object>(args[4]), op, as_double(args[6]),
                  as_double(args[7]));
    Py_RETURN_NONE;
  } catch (py::error_already_set& error) {
    error.restore();
  } catch (const py::builtin_exception& error) {
    error.set_error();
  } catch (const py::cast_error& error) {  // a TypeError, as pybind11's dispatch raises
    PyErr_SetString(PyExc_TypeError, error.what());
  } catch (const rf::Error& error) {
    set_python_error(error);
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
  }
  return nullptr;
}

PyMethodDef method{"allreduce_now_fast",
                   reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&allreduce_now_fast)),
                   METH_FASTCALL,
                   "Engine.allreduce_now(array, dtype, name, out, op, prescale, postscale) as a "
                   "function of the engine, without pybind11's dispatch."};

}  // namespace

void register_fast_allreduce(py::module_& m, AllreduceNow body) {
  allreduce_now = body;
  PyObject* function = PyCFunction_NewEx(&method, nullptr, m.ptr());
  if (function == nullptr) throw py::error_already_set();
  m.add_object("allreduce_now_fast", py::reinterpret_steal<py::object>(function));
}
