"""Average pooling with TensorFlow's ``"same"`` padding on every Keras backend.

TensorFlow and JAX average only the real positions of a window that overhangs the
input. Keras's PyTorch backend pads an uneven ``"same"`` window by repeating the
edge and counts the copies (keras-team/keras#18452), so the last row and column of
an even-sized input pooled 3x3/2 (or an odd-sized one pooled 2x2/2) differ. Under
that backend the pool here pads with zeros and divides by the number of real
positions instead.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from lambda_keras.layers import kernel_support


def _window_counts(size: int, pool_size: int, strides: int) -> np.ndarray:
    """Real positions in each ``"same"`` window along one axis, and the padding before."""
    outputs = -(-size // strides)
    padding = max((outputs - 1) * strides + pool_size - size, 0)
    starts = np.arange(outputs) * strides - padding // 2
    ends = starts + pool_size
    return np.minimum(ends, size) - np.maximum(starts, 0), padding


def average_pool_same(inputs, pool_size: int, strides: int, data_format: str = "channels_last"):
    """``"same"`` average pooling that leaves the padding out of the average.

    Args:
      inputs: ``[batch, *spatial, channels]`` (or ``[batch, channels, *spatial]`` with
        ``data_format="channels_first"``), 1 or 2 spatial axes.
      pool_size: window extent along every spatial axis.
      strides: stride along every spatial axis.
      data_format: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      The pooled tensor, spatial sizes ``ceil(size / strides)``.
    """
    if keras.backend.backend() != "torch":
        return ops.average_pool(inputs, pool_size, strides, padding="same", data_format=data_format)
    rank = len(inputs.shape) - 2
    first_spatial_axis = 1 if data_format == "channels_last" else 2
    shape = ops.shape(inputs)  # static under the PyTorch backend
    paddings, counts = [(0, 0)] * len(inputs.shape), np.ones((1,) * (rank + 2), "float32")
    for offset in range(rank):
        axis = first_spatial_axis + offset
        axis_counts, padding = _window_counts(int(shape[axis]), pool_size, strides)
        paddings[axis] = (padding // 2, padding - padding // 2)
        counts_shape = [1] * (rank + 2)
        counts_shape[axis] = -1
        counts = counts * axis_counts.reshape(counts_shape).astype("float32")
    padded = ops.pad(inputs, paddings)
    window_means = ops.average_pool(padded, pool_size, strides, padding="valid", data_format=data_format)
    scale = ops.convert_to_tensor(pool_size**rank / counts, dtype=inputs.dtype)
    return window_means * scale


@keras.saving.register_keras_serializable(package="lambda_keras")
class AveragePooling2D(keras.layers.AveragePooling2D):
    """``keras.layers.AveragePooling2D`` whose ``"same"`` padding gives TensorFlow's
    numbers on every backend (see ``average_pool_same``); same arguments.

    Input ``[batch, height, width, channels]`` (or channels-first), output pooled.
    """

    def call(self, inputs):
        if self.padding != "same" or self.pool_size[0] != self.pool_size[1] or self.strides[0] != self.strides[1]:
            return super().call(inputs)
        return average_pool_same(inputs, self.pool_size[0], self.strides[0], self.data_format)


@keras.saving.register_keras_serializable(package="lambda_keras")
class SymmetricMaxPooling2D(keras.layers.Layer):
    """Max pooling after ``padding`` positions of ``-inf`` on every side, PyTorch's
    ``MaxPool2d(pool_size, strides, padding)``.

    TensorFlow's ``"same"`` pads a 3x3 stride-2 window over an even size at the end
    only, which shifts every window by one position against PyTorch's; zero padding
    is right only after a ReLU (the inputs are then never negative), not after SiLU.

    Input ``[batch, height, width, channels]`` (or channels-first), output
    ``[batch, (height + 2 padding - pool_size) // strides + 1, ..., channels]``.

    Args:
      pool_size: window side.
      strides: stride along both spatial axes.
      padding: positions of ``-inf`` added before and after each spatial axis.
      data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
        ``keras.config.image_data_format()``.
      **kwargs: standard layer arguments.
    """

    def __init__(self, pool_size: int = 3, strides: int = 2, padding: int = 1, data_format: str | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding
        self.data_format = data_format or keras.config.image_data_format()

    def call(self, inputs):
        spatial_axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        paddings = [(self.padding, self.padding) if axis in spatial_axes else (0, 0) for axis in range(4)]
        # Padding with the input's minimum gives the same maxima (every window holds an
        # input position). Exports use it: LiteRT's XNNPACK refuses an int8 pad of -inf.
        padding_value = ops.min(inputs) if kernel_support.builtin_ops_only_active() else float("-inf")
        padded = ops.pad(inputs, paddings, constant_values=padding_value)
        return ops.max_pool(padded, self.pool_size, self.strides, padding="valid", data_format=self.data_format)

    def compute_output_shape(self, input_shape):
        spatial_axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        return tuple(
            (size + 2 * self.padding - self.pool_size) // self.strides + 1
            if axis in spatial_axes and size is not None else size
            for axis, size in enumerate(input_shape)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding,
             "data_format": self.data_format}
        )
        return config
