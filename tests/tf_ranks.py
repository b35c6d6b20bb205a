"""Rank-side helpers shared by the TensorFlow tests: TF imported once per pool process, quietly
and with few threads (2 cores are shared by every rank)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np


def tf_module():
    import tensorflow as tf

    return tf


def to_tf(a: np.ndarray):
    tf = tf_module()
    return tf.constant(a)


def to_np(t) -> np.ndarray:
    return np.array(t.numpy() if hasattr(t, "numpy") else t, copy=True)
