"""Horovod's TensorFlow helpers: broadcasting variables, and objects between ranks (the
object helpers are framework-neutral, from `ringflow._objects`)."""

from __future__ import annotations

import tensorflow as tf

from ringflow import _objects
from ringflow._process_sets import global_process_set
from ringflow.tensorflow.mpi_ops import broadcast, broadcast_

__all__ = ["allgather_object", "broadcast_object", "broadcast_variables"]


def broadcast_variables(variables, root_rank, process_set=global_process_set, inplace=False):
    """Assign root_rank's values to the variables on every rank (every rank passes them in
    the same order). Returns the op that does it when traced, None when eager."""
    variables = list(variables)
    if inplace:
        broadcast_(variables, root_rank, process_set=process_set)
        return None
    assigns = [v.assign(broadcast(v, root_rank, process_set=process_set)) for v in variables]
    return None if tf.executing_eagerly() else tf.group(*assigns)


def broadcast_object(obj, root_rank=0, session=None, name=None, process_set=global_process_set):
    """root_rank's picklable obj on every rank (session is Horovod's TF1 argument, unused)."""
    return _objects.broadcast_object(obj, root_rank, name, process_set)


def allgather_object(obj, session=None, name=None, process_set=global_process_set):
    """Every rank's picklable obj, in rank order."""
    return _objects.allgather_object(obj, name, process_set)
