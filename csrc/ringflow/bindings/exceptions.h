// ringflow._core's exception classes (Error, InvalidArgumentError, MismatchError, TimeoutError,
// PeerFailureError): created once at import, and rf::Error translated into them by kind.
#pragma once

#include <pybind11/pybind11.h>

void register_exceptions(pybind11::module_& m);
