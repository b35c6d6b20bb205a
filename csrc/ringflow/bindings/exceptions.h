// ringflow._core's exception classes (Error, InvalidArgumentError, MismatchError, TimeoutError,
// PeerFailureError): created once at import, and rf::Error translated into them by kind.
#pragma once

#include <pybind11/pybind11.h>

#include "ringflow/common/error.h"

void register_exceptions(pybind11::module_& m);
// Sets the Python error for `error` (its class by kind), for calls outside pybind11's dispatch.
void set_python_error(const rf::Error& error);
