"""`DistributedOptimizer`: Horovod's wrapper that averages gradients over the ranks while
``loss.backward()`` is still running.

Vocabulary. Every parameter of the wrapped optimizer belongs to one *bucket*: a bucket of its
own, or one of the ``groups`` (reduced as one grouped allreduce). A hook on each parameter
(``register_post_accumulate_grad_hook``) counts the backward passes that accumulated into its
gradient; after ``backward_passes_per_step`` of them the parameter is *ready*, and once every
member of its bucket that requires grad is ready the bucket's allreduce starts, in place on the
gradients, while backward goes on with the layers below. `synchronize` starts whatever has not
started (a bucket whose gradient this rank never computed travels as zeros: another rank may
have computed it), waits for everything and writes the averages back into ``p.grad``; `step`
calls it unless inside `skip_synchronize`. The engine matches tensors across ranks by name, so
the order in which ranks start them does not matter; the names come from ``named_parameters``
or from the parameters' order in the optimizer.

By default it behaves as Horovod 0.28.1's: the parameters that require grad at construction are
the ones reduced, for good (one frozen later still gets a zero gradient reduced and stepped;
one unfrozen or added later is not reduced); a `synchronize` with no backward pass since the
last one reduces the gradients again; with ``groups``, ``gradient_predivide_factor`` is ignored.
``RINGFLOW_TORCH_OPTIMIZER=ringflow`` (read at construction; set it alike on every rank) opts
into ringflow's, each one removing a way to silently train wrong:

- ``requires_grad`` is read at every step: a parameter frozen later is neither reduced nor
  given a zero gradient (so momentum and weight decay do not move it), and a parameter unfrozen
  later is reduced (its hook is registered at the next `zero_grad` or `synchronize`).
  Parameters added by ``add_param_group`` are reduced too.
- `synchronize` (or `step` outside `skip_synchronize`) right after a `synchronize`, with no
  backward pass in between, does not reduce the same gradients again (Horovod does, which
  with ``op=Sum`` multiplies them); `step` still warns there as Horovod does.
- ``gradient_predivide_factor`` applies to groups too (Horovod ignores it when ``groups`` is
  given, except for what `synchronize` reduces because backward did not complete its group).

Either way (not observable by a script that runs under Horovod):

- Groups are formed from the optimizer's parameter order on each rank, with no broadcast from
  rank 0: every rank must build the optimizer alike.
- The wrapper is a shallow copy of the optimizer passed in (same param-group dicts, state,
  defaults and hooks), so any optimizer class works, whatever its constructor takes, and
  state the optimizer already had is kept (Horovod's wrapper starts without it).
- Hooks hold the optimizer weakly and are removed when it is garbage-collected, so a
  replaced optimizer stops reducing gradients.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ringflow import size
from ringflow._process_sets import set_id
from ringflow._reduce_ops import Adasum, core_op
from ringflow.torch import _grads
from ringflow.torch.compression import Compression
from ringflow.torch.mpi_ops import (
    Average,
    ProcessSet,
    allreduce_async_,
    global_process_set,
    grouped_allreduce_async_,
    sparse_allreduce_async,
    synchronize,
)

__all__ = ["DistributedOptimizer"]

_STEP_AFTER_SYNCHRONIZE = (
    "optimizer.step() called without optimizer.skip_synchronize() context after "
    "optimizer.synchronize(). This can cause training slowdown. You may want to consider "
    "using optimizer.skip_synchronize() context if you use optimizer.synchronize() in your code."
)
_TOO_MANY_PASSES = (
    "Gradients were computed more than backward_passes_per_step times before call to step(). "
    "Increase backward_passes_per_step to accumulate gradients locally."
)
_ZERO_GRAD_IN_FLIGHT = (
    "optimizer.zero_grad() was called after loss.backward() but before optimizer.step() or "
    "optimizer.synchronize(). This is prohibited as it can cause a race condition."
)


class _Pending:
    """One started reduction: its handle, the parameters whose gradients it carries, their
    compression contexts (None: not compressed, a sparse allgather), and which of them get a
    sparse gradient back."""

    __slots__ = ("ctxs", "grouped", "handle", "params", "sparse")

    def __init__(self, handle, params, ctxs, sparse, grouped) -> None:
        self.handle = handle
        self.params: list[torch.Tensor] = params
        self.ctxs: list[Any] | None = ctxs
        self.sparse: list[bool] = sparse
        self.grouped: bool = grouped


def _hook_for(ref: weakref.ref):
    def hook(param: torch.Tensor) -> None:
        optimizer = ref()
        if optimizer is not None:
            optimizer._grad_accumulated(param)

    return hook


def _remove_hooks(handles: list) -> None:
    for h in handles:
        h.remove()


class _DistributedOptimizer:
    """Mixed in front of the wrapped optimizer's class (see `DistributedOptimizer`)."""

    # -- set-up ---------------------------------------------------------------------------------

    def _setup(
        self,
        named_parameters,
        compression,
        backward_passes_per_step,
        op,
        gradient_predivide_factor,
        groups,
        sparse_as_dense,
        process_set,
    ) -> None:
        self._compression = compression
        self._track = _ringflow_semantics()  # else Horovod's: see the module docstring
        self._average = op != Adasum and core_op(op) == core_op(Average)
        self.backward_passes_per_step = backward_passes_per_step
        self.op = op
        self.gradient_predivide_factor = gradient_predivide_factor
        self.sparse_as_dense = sparse_as_dense
        self.process_set = process_set
        params = [p for group in self.param_groups for p in group["params"]]
        # Horovod reduces the parameters that require grad now, and only those, for good.
        self._requires_update = {p for p in params if p.requires_grad}
        self._parameter_names = _grads.names(named_parameters, self.param_groups)
        self._bucket_of: dict[torch.Tensor, tuple] = {}
        self._grouping = groups is not None
        for bucket in _grads.buckets(groups, params):
            for p in bucket:
                self._bucket_of[p] = bucket
        self._delay = {p: backward_passes_per_step for p in params}
        self._ready: dict[tuple, set] = {}  # bucket -> its members ready this step
        self._started: set[tuple] = set()  # buckets whose allreduce started this step
        self._pending: list[_Pending] = []
        self._dirty = False  # a hook ran since the last synchronize
        self._synchronized = False
        self._should_synchronize = True
        self._hooked: set[torch.Tensor] = set()
        # Parameters seen with a sparse gradient -> its sparse_dim: when this rank has no
        # gradient for one, it sends an empty sparse one, matching the other ranks' allgather.
        self._sparse_dims: dict[torch.Tensor, int] = {}
        self._hook_handles: list = []
        weakref.finalize(self, _remove_hooks, self._hook_handles)
        set_id(process_set)  # a set never added (or removed) fails here, not in backward
        self._active = process_set.included() and process_set.size() > 1
        self._refresh()

    def _wanted(self, p: torch.Tensor) -> bool:
        """Whether p's gradient is reduced this step."""
        return p.requires_grad if self._track else p in self._requires_update

    def _refresh(self) -> None:
        """Adopt parameters added since (named by position) and hook those requiring grad
        (with Horovod's semantics only once, at construction)."""
        if not self._active or (not self._track and self._hooked):
            return
        for group in self.param_groups:
            for p in group["params"]:
                if p not in self._bucket_of:
                    if not self._track:
                        continue  # Horovod: parameters added later are not reduced
                    self._parameter_names[p] = f"noname.{len(self._bucket_of)}"
                    self._bucket_of[p] = (p,)
                    self._delay[p] = self.backward_passes_per_step
                if self._wanted(p) and p not in self._hooked:
                    self._hooked.add(p)
                    hook = _hook_for(weakref.ref(self))
                    self._hook_handles.append(p.register_post_accumulate_grad_hook(hook))

    def set_backward_passes_per_step(self, passes: int) -> None:
        """Change how many backward passes accumulate into a gradient before its allreduce."""
        if passes <= 0:
            raise ValueError("backward_passes_per_step must be > 0")
        self.backward_passes_per_step = passes
        for p in self._delay:
            self._delay[p] = passes

    # -- during backward ------------------------------------------------------------------------

    def _grad_accumulated(self, p: torch.Tensor) -> None:
        """The hook: count a pass into p.grad; start p's bucket once all of it is ready."""
        if p not in self._delay:
            return
        if self._delay[p] <= 0:
            raise AssertionError(_TOO_MANY_PASSES)
        self._dirty = True
        self._delay[p] -= 1
        if self._delay[p] > 0:
            return
        bucket = self._bucket_of[p]
        ready = self._ready.setdefault(bucket, set())
        ready.add(p)
        if bucket not in self._started and all(m in ready for m in bucket if self._wanted(m)):
            # Horovod ignores the predivide factor for a group its hooks completed.
            self._start(bucket, predivide=self._track or not self._grouping)

    def _start(self, bucket: tuple, predivide: bool = True) -> None:
        """Start the allreduce of the bucket's members that require grad; a gradient this rank
        did not compute travels as zeros (another rank may have computed it)."""
        self._started.add(bucket)
        members = [p for p in bucket if self._wanted(p)]
        if not members:
            return
        prescale = postscale = 1.0
        if self._average and predivide:  # Horovod's split; the engine divides by the size
            prescale = 1.0 / self.gradient_predivide_factor
            postscale = self.gradient_predivide_factor
        common = {
            "op": self.op,
            "prescale_factor": prescale,
            "postscale_factor": postscale,
            "process_set": self.process_set,
        }
        dense, tensors, ctxs, was_sparse = [], [], [], []
        with torch.no_grad():
            for p in members:
                if p.grad is None:
                    p.grad = _grads.zeros(p, self._sparse_dims.get(p))
                grad = p.grad
                if grad.is_sparse:
                    self._sparse_dims[p] = grad.sparse_dim()
                if grad.is_sparse and not self.sparse_as_dense:  # allgather of indices, values
                    name = f"grad.{self._parameter_names[p]}"
                    handle = sparse_allreduce_async(
                        grad, name=name, op=self.op, process_set=self.process_set
                    )
                    self._pending.append(_Pending(handle, [p], None, [True], False))
                    continue
                compressed, ctx = self._compression.compress(
                    grad.to_dense() if grad.is_sparse else grad
                )
                dense.append(p)
                tensors.append(compressed)
                ctxs.append(ctx)
                was_sparse.append(grad.is_sparse)
        if not dense:
            return
        name = self._parameter_names[bucket[0]]
        if len(bucket) == 1:
            handle = allreduce_async_(tensors[0], name=f"grad.{name}", **common)
        else:
            handle = grouped_allreduce_async_(tensors, name=f"grads.{name}", **common)
        self._pending.append(_Pending(handle, dense, ctxs, was_sparse, len(bucket) > 1))

    # -- synchronize and step -------------------------------------------------------------------

    def synchronize(self) -> None:
        """Finish every gradient's allreduce (starting those not started) and write the results
        into ``p.grad``. Call it before reading or clipping gradients; then `step` inside
        `skip_synchronize`."""
        if not self._active:
            self._synchronized = True
            return
        if self._track and self._synchronized and not self._dirty:
            return  # nothing accumulated since the last synchronize: reducing again would
            # average the average (and multiply a Sum)
        for bucket in dict.fromkeys(self._bucket_of.values()):
            if bucket not in self._started:
                self._start(bucket)
        pending, self._pending = self._pending, []
        self._reset()
        with torch.no_grad():
            for item in pending:
                result = synchronize(item.handle)
                outputs = result if item.grouped else [result]
                if item.ctxs is not None:
                    decompress = self._compression.decompress
                    outputs = [decompress(out, ctx) for out, ctx in zip(outputs, item.ctxs)]
                for p, out, sparse in zip(item.params, outputs, item.sparse):
                    _grads.write_grad(p, out, sparse)
        self._synchronized = True
        self._refresh()

    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group; the new parameters are reduced from the next backward on."""
        super().add_param_group(param_group)
        if hasattr(self, "_bucket_of"):  # not while the wrapper is being set up
            self._refresh()

    def _reset(self) -> None:
        bpps = self.backward_passes_per_step
        for p in self._delay:
            self._delay[p] = bpps
        self._ready.clear()
        self._started.clear()
        self._dirty = False

    @contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Within it, `step` does not synchronize: for a `synchronize` already made (to clip)."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        """Synchronize the gradients (unless in `skip_synchronize`), then the wrapped step."""
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn(_STEP_AFTER_SYNCHRONIZE, stacklevel=1)  # Horovod's location
            self.synchronize()
        self._synchronized = False
        return super().step(closure)

    # torch's profiling wrapper already wraps the base class' step (hooks run once, there,
    # after the gradients were averaged): it must not wrap this one as well.
    step.hooked = True  # type: ignore[attr-defined]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped zero_grad; an error while gradients are being reduced (as Horovod)."""
        if self._dirty or self._pending:
            raise AssertionError(_ZERO_GRAD_IN_FLIGHT)
        super().zero_grad(set_to_none)
        self._refresh()

    def load_state_dict(self, state_dict) -> None:
        """The wrapped load_state_dict; forgets accumulation and allreduces in progress."""
        self._pending = []
        self._reset()
        self._synchronized = False
        self._should_synchronize = True
        super().load_state_dict(state_dict)


_classes: dict[type, type] = {}
_SEMANTICS = ("horovod", "ringflow")


def _ringflow_semantics() -> bool:
    """Whether RINGFLOW_TORCH_OPTIMIZER opts into ringflow's semantics (default: Horovod's)."""
    mode = os.environ.get("RINGFLOW_TORCH_OPTIMIZER", "horovod") or "horovod"
    if mode not in _SEMANTICS:
        raise ValueError(f"RINGFLOW_TORCH_OPTIMIZER={mode} is not one of horovod, ringflow")
    return mode == "ringflow"


def DistributedOptimizer(
    optimizer: torch.optim.Optimizer,
    named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
    compression=Compression.none,
    backward_passes_per_step: int = 1,
    op=Average,
    gradient_predivide_factor: float = 1.0,
    num_groups: int = 0,
    groups: list | int | None = None,
    sparse_as_dense: bool = False,
    process_set: ProcessSet = global_process_set,
) -> torch.optim.Optimizer:
    """Wrap ``optimizer`` so that `step` applies gradients averaged (``op``) over the ranks.

    The result is an instance of a subclass of the optimizer's class with the same name
    (``isinstance`` holds; ``state_dict``/``load_state_dict`` work), sharing its param groups
    and state. Each gradient's allreduce starts from a hook as soon as backward has accumulated
    it ``backward_passes_per_step`` times; `step` waits for them (see `synchronize` and
    `skip_synchronize` for clipping). Every rank must call backward and step alike.

    Parameters
    ----------
    named_parameters : (name, parameter) pairs, usually ``model.named_parameters()``; names
        must be unique and cover every parameter of the optimizer. Default: names by order.
    compression : ``Compression.none``, ``.fp16`` or ``.bf16``: the type gradients travel in.
    backward_passes_per_step : backward passes that accumulate locally before the allreduce.
    op : ``Average`` (default) or ``Sum`` (or another reduction).
    gradient_predivide_factor : with ``Average``, gradients are scaled by 1/f before the sum
        and by f/size after it (``op`` must be ``Average`` when f != 1).
    num_groups : deprecated spelling of an int ``groups`` (Horovod's; warns).
    groups : a list of lists of parameters, each reduced as one grouped allreduce, or an int:
        the parameters requiring grad split into that many contiguous groups.
    sparse_as_dense : reduce sparse gradients as dense tensors (else: allgather of indices and
        values); the optimizer gets sparse gradients back either way.
    process_set : the ranks to average over; on ranks outside it the optimizer is the plain one.
    """
    if op == Adasum and size() > 1:
        raise NotImplementedError("Adasum is not supported by ringflow; use op=Average or op=Sum")
    if gradient_predivide_factor != 1.0 and (op == Adasum or core_op(op) != core_op(Average)):
        raise ValueError("gradient_predivide_factor not supported with op != Average")
    if num_groups != 0:
        warnings.warn(
            "Parameter `num_groups` has been replaced by `groups` and will be removed in v0.23.0.",
            DeprecationWarning,
            stacklevel=1,  # as Horovod: attributed to the library, hidden by default filters
        )
        if groups is None:
            groups = num_groups
    if gradient_predivide_factor <= 0:
        raise ValueError("gradient_predivide_factor must be > 0")
    if backward_passes_per_step <= 0:
        raise ValueError("backward_passes_per_step must be > 0")
    base = type(optimizer)
    if isinstance(optimizer, _DistributedOptimizer):
        raise ValueError("optimizer is already a DistributedOptimizer")
    cls = _classes.get(base)
    if cls is None:
        cls = type(base.__name__, (_DistributedOptimizer, base), {})  # Horovod's naming
        _classes[base] = cls
    wrapped = cls.__new__(cls)
    # Instance attributes that shadow methods (an LR scheduler made before wrapping patches
    # `optimizer.step`) would bypass the averaging step: keep the class's methods.
    wrapped.__dict__.update(
        {k: v for k, v in optimizer.__dict__.items() if not (callable(v) and hasattr(base, k))}
    )
    wrapped.param_groups = list(optimizer.param_groups)  # the same group dicts, as Horovod
    wrapped._setup(
        named_parameters,
        compression,
        backward_passes_per_step,
        op,
        gradient_predivide_factor,
        groups,
        sparse_as_dense,
        process_set,
    )
    return wrapped
