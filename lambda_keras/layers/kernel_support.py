"""Which convolution kernels the running platform has, probed once per process.

TensorFlow's CPU kernel for a transposed convolution with a dilation exists only in
its oneDNN path: with oneDNN off (TensorFlow's default on CPUs without AVX-512-class
features, or ``TF_ENABLE_ONEDNN_OPTS=0``) the op raises "Current CPU implementations
do not yet support dilation rates larger than 1". The lambda convolution then runs its
folded form, which every platform has. JAX, PyTorch and XLA have the dilated kernel.

An export to a portable format (ONNX, LiteRT) needs more: LiteRT's builtin
``TRANSPOSE_CONV`` has no dilation, so a graph traced for it must not hold the dilated
form either. ``builtin_ops_only()`` says so for the duration of a trace; which
implementation ``"auto"`` picks stays the host platform's.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import keras

# Open builtin_ops_only() blocks; a counter so that nested blocks (an export that
# traces twice) leave it right.
_builtin_ops_only_depth = 0


@contextlib.contextmanager
def builtin_ops_only() -> Iterator[None]:
    """Within the block, layers traced (or run) use only kernels that every export
    runtime has as a builtin op (``builtin_ops_only_active()``): the lambda convolution
    traces its folded form (the same numbers).

    Wrap ``model.export(..., format="litert")`` (or ``"onnx"``) in it when the model
    holds lambda layers with ``implementation="conv"`` (or ``"auto"`` at sizes that pick
    the convolution); ``export.portable`` does.
    """
    global _builtin_ops_only_depth  # pylint: disable=global-statement
    _builtin_ops_only_depth += 1
    try:
        yield
    finally:
        _builtin_ops_only_depth -= 1


def builtin_ops_only_active() -> bool:
    """Whether a ``builtin_ops_only()`` block is open."""
    return _builtin_ops_only_depth > 0


@functools.cache
def has_dilated_transposed_convolution() -> bool:
    """Whether ``ops.conv_transpose`` with a dilation rate runs on this process's CPU.

    Under the TensorFlow backend a one-pixel transposed convolution runs eagerly on
    the CPU the first time this is asked (outside any ``tf.function`` being traced);
    the answer holds for the process, since oneDNN is chosen when TensorFlow loads.
    Other backends always have the kernel.
    """
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf  # only under the TensorFlow backend

    with tf.init_scope(), tf.device("/CPU:0"):
        try:
            tf.nn.conv2d_transpose(
                tf.zeros((1, 1, 3, 1)), tf.zeros((1, 2, 1, 1)), (1, 1, 3, 1), 1, "SAME", dilations=(1, 2)
            )
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return False
    return True


@functools.cache
def accelerator() -> str:
    """``"gpu"``, ``"tpu"`` or ``"cpu"``: where this process's backend places its ops by
    default (Keras puts every tensor on the first accelerator it finds)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        platform = jax.default_backend()
        return "gpu" if platform in ("gpu", "cuda", "rocm") else platform
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        for device_type in ("TPU", "GPU"):
            if tf.config.list_logical_devices(device_type):
                return device_type.lower()
    return "cpu"
