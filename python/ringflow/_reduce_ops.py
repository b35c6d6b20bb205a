"""Horovod's reduction ops and the rules for choosing one, as in Horovod 0.28.1 (shared by
ringflow.torch and ringflow.tensorflow).

The ops are Horovod's integers (``Average = 0, Sum = 1, Adasum = 2, Min = 3, Max = 4,
Product = 5``); ringflow's own `ringflow.ReduceOp` values are accepted too. Horovod's errors:

- ``op`` and the deprecated ``average`` together: ValueError; ``average`` alone: a
  DeprecationWarning (Horovod's texts).
- Adasum: NotImplementedError (ringflow has no Adasum; Horovod raises it too where its own
  Adasum cannot run).
- reducescatter with an op Horovod's core rejects (Adasum): ``HorovodInternalError``
  ("Reducescatter currently only supports AVERAGE and SUM."). Min, Max and Product are a
  ringflow extension there (Horovod rejects them the same way).
"""

from __future__ import annotations

import numbers
import warnings

from ringflow import _core

__all__ = [
    "Adasum",
    "Average",
    "Max",
    "Min",
    "Product",
    "Sum",
    "allreduce_op",
    "core_op",
    "reducescatter_op",
]

Average = 0
Sum = 1
Adasum = 2
Min = 3
Max = 4
Product = 5

_R = _core.ReduceOp
_CORE = {Average: _R.Average, Sum: _R.Sum, Min: _R.Min, Max: _R.Max, Product: _R.Product}

_DEPRECATED_AVERAGE = "Parameter `average` has been replaced with `op` and will be removed in v1.0"
_OP_AND_AVERAGE = "The op parameter supersedes average. Please provide only one of them."
_REDUCESCATTER_OPS = "Reducescatter currently only supports AVERAGE and SUM."


def core_op(op) -> _core.ReduceOp:
    """The core's op for a Horovod op (an int) or a `ringflow.ReduceOp`."""
    if isinstance(op, _R):
        return op
    if isinstance(op, numbers.Integral) and not isinstance(op, bool):
        op = int(op)
        if op == Adasum:
            raise NotImplementedError(
                "Adasum is not supported by ringflow; use op=Average or op=Sum"
            )
        if op in _CORE:
            return _CORE[op]
    raise ValueError(f"op={op!r} is not a reduction op (Average, Sum, Min, Max or Product)")


def allreduce_op(op, average) -> _core.ReduceOp:
    """Horovod's rule: op wins, average=True/False is the deprecated spelling, default Average."""
    if op is not None:
        if average is not None:
            raise ValueError(_OP_AND_AVERAGE)
        return core_op(op)
    if average is not None:
        # stacklevel 1, as Horovod: attributed to the library, so hidden by default filters.
        warnings.warn(_DEPRECATED_AVERAGE, DeprecationWarning, stacklevel=1)
        return _R.Average if average else _R.Sum
    return _R.Average


def reducescatter_op(op) -> _core.ReduceOp:
    """reducescatter's op: Horovod's core takes Average and Sum (ringflow also Min, Max and
    Product); anything else is the HorovodInternalError Horovod raises."""
    if isinstance(op, numbers.Integral) and not isinstance(op, bool) and op == Adasum:
        raise _core.Error(_REDUCESCATTER_OPS)
    return core_op(op)
