"""The lambda convolution (paper Section 3.4, Figure 5) with a hand-written gradient.

Position lambdas of a local (or global) scope are a convolution of every value
channel's map with the relative table ``R``:

    lambdas[b, p, v, k] = sum_{t, u} values[b, p + t - c, u, v] * R[t, k, u]

over the table offsets ``t`` (``c = T // 2`` the centre, zero outside the map); the
paper writes it as an (n+1)-d convolution with a kernel of extent 1 along ``v``.

Two forward forms compute the same lambdas, ``[b, n, v, k]``:

- ``"dilated"``: the ``v`` channels are folded into the last spatial axis,
  ``[b, *S[:-1], S[-1] * v, u]`` (a free reshape of the values when u = 1), and the
  kernel is dilated by ``v`` along that axis, so each channel meets the same taps on
  its own and no transpose is needed. It runs as the transposed convolution of the
  spatially flipped table (the same map for stride 1 and "same" padding), whose
  kernel layout ``[*T, out=k, in=u]`` is the table's. TensorFlow's CPU kernel for a
  dilated transposed convolution exists only in its oneDNN build path, so this form
  is used where ``kernel_support.has_dilated_transposed_convolution()`` says it runs.
- ``"folded"``: ``v`` goes into the batch, ``[b * v, *S, u]``, and a plain convolution
  without dilation runs; two transposes more, but a kernel every platform has.

Gradient. Both forms share one hand-written backward pass in the folded layout,
written with convolutions without dilation: ``d values`` is the transposed
convolution of the upstream gradient with the table, and ``d R`` correlates the
zero-padded values with the upstream gradient, batch and ``v`` as the contracted
channels. TensorFlow's own filter gradient of these convolutions has no fast CPU
kernel (docs/design.md records the measurements).

Written with ``keras.ops`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops


FORMS = ("dilated", "folded")


def lambda_convolution(values, table, spatial_shape: Sequence, form: str = "folded"):
    """Position lambdas of a relative table: ``[b, n, u, v]`` -> ``[b, n, v, k]``.

    Args:
      values: ``[batch, positions, intra_depth, value_dim]``, float32, positions
        flattened row-major from ``spatial_shape``.
      table: ``[*T, key_dim, intra_depth]`` relative embeddings (odd extents), offset
        ``context - query`` at ``offset + T // 2``.
      spatial_shape: ``(length,)`` or ``(height, width)``; ints or scalar tensors.
      form: ``"dilated"`` or ``"folded"``, the forward pass (module docstring);
        both give the same numbers.

    Returns:
      ``[batch, positions, value_dim, key_dim]`` position lambdas.
    """
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {FORMS}. Received: form={form!r}")
    rank = len(spatial_shape)
    spatial_shape = tuple(spatial_shape)
    value_dim, depth, key_dim = values.shape[-1], values.shape[-2], table.shape[-2]
    extents = tuple(table.shape[:rank])
    spatial_axes = tuple(range(rank))

    def fold_into_batch(tensor):
        """``[b, *S, v, c]`` (any view of it) -> ``[b * v, *S, c]``."""
        channels = tensor.shape[-1]
        batch = ops.shape(tensor)[0]
        tensor = ops.reshape(tensor, (batch,) + spatial_shape + (value_dim, channels))
        tensor = ops.transpose(tensor, (0, rank + 1) + tuple(range(1, rank + 1)) + (rank + 2,))
        return ops.reshape(tensor, (-1,) + spatial_shape + (channels,))

    def unfold_from_batch(tensor, batch):
        """``[b * v, *S, c]`` -> ``[b, *S[:-1], S[-1] * v, c]``."""
        channels = tensor.shape[-1]
        tensor = ops.reshape(tensor, (batch, value_dim) + spatial_shape + (channels,))
        tensor = ops.transpose(tensor, (0,) + tuple(range(2, rank + 2)) + (1, rank + 2))
        return ops.reshape(tensor, (batch,) + spatial_shape[:-1] + (spatial_shape[-1] * value_dim, channels))

    @ops.custom_gradient
    def convolve(maps, table):
        batch = ops.shape(maps)[0]
        # [*T, in=u, out=k], the plain correlation's kernel: the dilated forward does not
        # use it, so only the folded form and the gradient transpose the table.
        kernel = None
        folded_maps = None  # [b v, *S, u]: the folded form computes it, the gradient reuses it
        if form == "dilated":
            lambdas = ops.conv_transpose(
                maps,
                ops.flip(table, axis=spatial_axes),
                strides=1,
                padding="same",
                dilation_rate=(1,) * (rank - 1) + (value_dim,),
            )
        else:
            kernel = ops.swapaxes(table, -1, -2)
            folded_maps = fold_into_batch(maps)
            lambdas = unfold_from_batch(ops.conv(folded_maps, kernel, strides=1, padding="same"), batch)

        def gradients(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            folded_upstream = fold_into_batch(upstream)  # [b v, *S, k]
            maps_in_batch = fold_into_batch(maps) if folded_maps is None else folded_maps
            correlation_kernel = ops.swapaxes(table, -1, -2) if kernel is None else kernel
            maps_gradient = unfold_from_batch(
                ops.conv_transpose(folded_upstream, correlation_kernel, strides=1, padding="same"), batch
            )
            # d R[t, k, u] = sum_{b v, p} values[b v, p + t - c, u] upstream[b v, p, k]: a
            # valid correlation of the padded values ([u, *(S + T - 1), b v]) with the
            # upstream gradient as a [*S, in=b v, out=k] kernel.
            padded = ops.pad(maps_in_batch, ((0, 0),) + tuple((t // 2, t // 2) for t in extents) + ((0, 0),))
            padded = ops.transpose(padded, (rank + 1,) + tuple(range(1, rank + 1)) + (0,))
            upstream_kernel = ops.transpose(folded_upstream, tuple(range(1, rank + 1)) + (0, rank + 1))
            table_gradient = ops.conv(padded, upstream_kernel, strides=1, padding="valid")  # [u, *T, k]
            table_gradient = ops.transpose(table_gradient, tuple(range(1, rank + 1)) + (rank + 1, 0))
            return maps_gradient, table_gradient

        return lambdas, gradients

    batch = ops.shape(values)[0]
    if depth > 1:
        values = ops.swapaxes(values, 2, 3)  # [b, n, v, u]: v before the convolution channels
    maps = ops.reshape(values, (batch,) + spatial_shape[:-1] + (spatial_shape[-1] * value_dim, depth))
    lambdas = convolve(maps, table)
    return ops.reshape(lambdas, (batch, -1, value_dim, key_dim))
