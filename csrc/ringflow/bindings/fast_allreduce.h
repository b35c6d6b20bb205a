// Engine.allreduce_now without pybind11's dispatch: the commonest blocking call, 8 bytes of it
// taking ~5 us, spent ~0.5 us in argument casters and the dispatcher's records. A METH_FASTCALL
// function reads its arguments straight from the vector and calls the same code.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "ringflow/common/dtype.h"
#include "ringflow/engine/engine.h"

using AllreduceNow = void (*)(rf::Engine& engine, const pybind11::array& array, rf::DType dtype,
                              std::string name, const pybind11::object& out, rf::ReduceOp op,
                              double prescale, double postscale);

// Adds _core.allreduce_now_fast(engine, array, dtype, name, out, op, prescale, postscale),
// which calls `body` with them (checked as pybind11 would) and raises as pybind11 would.
void register_fast_allreduce(pybind11::module_& m, AllreduceNow body);
