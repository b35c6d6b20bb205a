"""Horovod's TensorFlow gradient compression: floating-point tensors travel as float16 (or
bfloat16) and are cast back after the collective; other tensors pass through."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["BF16Compressor", "Compression", "Compressor", "FP16Compressor", "NoneCompressor"]


class Compressor:
    """Interface: ``compress(tensor) -> (tensor, ctx)``, ``decompress(tensor, ctx)``."""

    @staticmethod
    def compress(tensor: tf.Tensor) -> tuple[tf.Tensor, Any]:
        raise NotImplementedError

    @staticmethod
    def decompress(tensor: tf.Tensor, ctx: Any) -> tf.Tensor:
        raise NotImplementedError


class NoneCompressor(Compressor):
    @staticmethod
    def compress(tensor):
        return tensor, None

    @staticmethod
    def decompress(tensor, ctx):
        return tensor


class _CastCompressor(Compressor):
    wire: tf.DType

    @classmethod
    def compress(cls, tensor):
        if tensor.dtype.is_floating:
            return tf.cast(tensor, cls.wire), tensor.dtype
        return tensor, tensor.dtype

    @staticmethod
    def decompress(tensor, ctx):
        return tf.cast(tensor, ctx) if ctx is not None and ctx.is_floating else tensor


class FP16Compressor(_CastCompressor):
    """float16 on the wire (range +-65504: large gradients overflow)."""

    wire = tf.float16


class BF16Compressor(_CastCompressor):
    """bfloat16 on the wire (float32's range, 8 significant bits)."""

    wire = tf.bfloat16


class Compression:
    """The compressors by Horovod's names: ``Compression.none``, ``.fp16`` (and ``.bf16``)."""

    none = NoneCompressor
    fp16 = FP16Compressor
    bf16 = BF16Compressor
