"""Relative position tables for the position lambdas (paper Section 3.3).

A lambda layer stores one table ``R`` of relative position embeddings per layer,
``[T, k, u]`` for sequences or ``[T_h, T_w, k, u]`` for images, indexed by the
relative offset ``context position - query position``: offset ``o`` lives at
``o + T // 2``. A local scope ``r`` stores ``T = r``; the global scope of an
``H x W`` input stores ``T = (2H - 1, 2W - 1)`` and covers every offset. This is
the convention of lucidrains' ``lambda-networks`` and of timm, so their weights
map onto ours without flipping (docs/design.md).

Written with ``keras.ops`` only, so it runs on every Keras 3 backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops


def offset_indices(length, table_extent: int, causal: bool = False):
    """Table indices and validity of every (query, context) pair along one axis.

    Args:
      length: number of positions along the axis (a Python int or a scalar tensor).
      table_extent: the table's (odd) extent along the axis.
      causal: if True, context positions after the query are invalid.

    Returns:
      ``(indices, valid)``, both ``[length(query), length(context)]``: the clipped
      table index of each offset and whether the offset falls inside the table.
    """
    positions = ops.arange(length, dtype="int32")
    offsets = positions[None, :] - positions[:, None]  # context - query
    indices = offsets + table_extent // 2
    valid = ops.logical_and(indices >= 0, indices < table_extent)
    if causal:
        valid = ops.logical_and(valid, offsets <= 0)
    return ops.clip(indices, 0, table_extent - 1), valid


def gather_relative_embeddings(table, spatial_shape: Sequence, causal: bool = False):
    """Expands a relative table into per-pair embeddings ``E[n, m, k, u]`` (Figure 3).

    ``E[n, m] = R[offset(n, m)]`` where the offset falls inside the table, and zero
    elsewhere: the masked local scope of Section 3.4, or the global scope when the
    table covers every offset.

    Args:
      table: ``[T, k, u]`` (sequences) or ``[T_h, T_w, k, u]`` (images).
      spatial_shape: ``(length,)`` or ``(height, width)``; ints or scalar tensors.
      causal: zero the embeddings of context positions after the query (sequences).

    Returns:
      ``[n, m, k, u]`` with ``n = m = prod(spatial_shape)``, positions flattened
      row-major, in the table's dtype.
    """
    key_dim, intra_depth = table.shape[-2], table.shape[-1]
    if len(spatial_shape) == 1:
        indices, valid = offset_indices(spatial_shape[0], table.shape[0], causal)
        flat_table = table
    else:
        height, width = spatial_shape
        extent_h, extent_w = table.shape[0], table.shape[1]
        rows, rows_valid = offset_indices(height, extent_h, causal=False)
        cols, cols_valid = offset_indices(width, extent_w, causal=False)
        # [H(query), W(query), H(context), W(context)] -> [n, m], row-major.
        indices = rows[:, None, :, None] * extent_w + cols[None, :, None, :]
        valid = ops.logical_and(rows_valid[:, None, :, None], cols_valid[None, :, None, :])
        positions = height * width
        indices = ops.reshape(indices, (positions, positions))
        valid = ops.reshape(valid, (positions, positions))
        flat_table = ops.reshape(table, (extent_h * extent_w, key_dim, intra_depth))
    embeddings = ops.take(flat_table, indices, axis=0)
    return embeddings * ops.cast(valid, table.dtype)[:, :, None, None]


def causal_table_mask(table_extent: int, dtype):
    """``[T, 1, 1]`` mask that zeroes a 1-D table at positive (future) offsets."""
    offsets = ops.arange(table_extent, dtype="int32") - table_extent // 2
    return ops.cast(offsets <= 0, dtype)[:, None, None]
