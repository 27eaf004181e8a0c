"""A NumPy restatement of the paper's lambda layer, used as the tests' reference.

Written from the paper, not from our layer: Figure 3 (multi-query lambda layer),
Figure 8 (intra-depth u), Section 3.4 (local scope: embeddings zero outside an
r x r window) and Appendix B.2 (masked context). Loops over query and context
positions make the relative offsets explicit; everything runs in float64.
"""

from __future__ import annotations

import itertools

import numpy as np


def batch_norm(x, gamma, beta, mean, variance, epsilon):
    """Inference-mode batch norm over the last axis."""
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def relative_embeddings(table, spatial_shape, causal=False):
    """``E[n, m, k, u]`` from a ``[*T, k, u]`` table, offset = context - query."""
    extents = np.array(table.shape[:-2])
    positions = np.array(list(itertools.product(*(range(size) for size in spatial_shape))))
    embeddings = np.zeros((len(positions), len(positions)) + table.shape[-2:])
    for query_index, query in enumerate(positions):
        # One query at a time, every context position at once.
        offsets = positions - query
        index = offsets + extents // 2
        inside = np.all((index >= 0) & (index < extents), axis=1)
        if causal:
            inside &= offsets[:, 0] <= 0
        embeddings[query_index, inside] = table[tuple(index[inside].T)]
    return embeddings


def softmax(logits, axis):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=axis, keepdims=True)


def lambda_layer(
    inputs,
    weights,
    *,
    key_dim,
    num_heads,
    intra_depth,
    use_content=True,
    use_position=True,
    causal=False,
    mask=None,
    epsilon=1e-3,
    key_normalization="softmax",
    query_softmax=False,
    use_batch_norm=True,
):
    """The lambda layer of Figures 3 and 8 in inference mode.

    Args:
      inputs: ``[b, *S, d]``.
      weights: dict with ``query_kernel [d, h*k]``, ``key_kernel [d, u*k]``,
        ``value_kernel [d, u*v]``, ``query_norm`` / ``value_norm`` as
        ``(gamma, beta, mean, variance)``, ``position_embeddings [*T, k, u]``.
      mask: optional ``[b, n]`` booleans, False for padded context positions.
      key_normalization, query_softmax, use_batch_norm: the Table 12 variants: keys
        normalised over the context by softmax, to unit L2 norm, or not at all;
        queries also softmax-normalised over k; no batch norm on queries and values
        (``weights`` then has no ``query_norm`` / ``value_norm``).

    Returns:
      ``[b, *S, h*v]``, channel ``head * v + j``.
    """
    inputs = np.asarray(inputs, np.float64)
    batch, spatial_shape, channels = inputs.shape[0], inputs.shape[1:-1], inputs.shape[-1]
    positions = int(np.prod(spatial_shape))
    flat = inputs.reshape(batch, positions, channels)
    queries = flat @ weights["query_kernel"]
    values = flat @ weights["value_kernel"]
    if use_batch_norm:
        queries = batch_norm(queries, *weights["query_norm"], epsilon)
        values = batch_norm(values, *weights["value_norm"], epsilon)
    queries = queries.reshape(batch, positions, num_heads, key_dim)
    if query_softmax:
        queries = softmax(queries, axis=-1)
    value_dim = values.shape[-1] // intra_depth
    values = values.reshape(batch, positions, intra_depth, value_dim)  # u-major channels
    context = np.ones((batch, positions), bool) if mask is None else np.asarray(mask, bool)
    values = values * context[:, :, None, None]
    # visible[b, n, m]: the context positions query n may use.
    visible = np.broadcast_to(context[:, None, :], (batch, positions, positions)).copy()
    if causal:
        visible &= np.tril(np.ones((positions, positions), bool))[None]

    lambdas = np.zeros((batch, positions, key_dim, value_dim))
    if use_content:
        keys = (flat @ weights["key_kernel"]).reshape(batch, positions, intra_depth, key_dim)
        # The content lambda depends on the query only through the context it sees.
        content_lambdas: dict[tuple[int, bytes], np.ndarray] = {}
        for b, n in itertools.product(range(batch), range(positions)):
            if not visible[b, n].any():
                continue
            seen = (b, visible[b, n].tobytes())
            if seen not in content_lambdas:
                keys_in_context = keys[b, visible[b, n]]  # [m', u, k]
                if key_normalization == "softmax":  # over context positions
                    normalized = softmax(keys_in_context, axis=0)
                elif key_normalization == "l2":
                    norms = np.sqrt((keys_in_context**2).sum(axis=0, keepdims=True))
                    normalized = keys_in_context / np.maximum(norms, 1e-6)
                else:
                    normalized = keys_in_context
                content_lambdas[seen] = np.einsum("muk,muv->kv", normalized, values[b, visible[b, n]])
            lambdas[b, n] += content_lambdas[seen]
    if use_position:
        embeddings = relative_embeddings(weights["position_embeddings"], spatial_shape, causal)
        lambdas += np.einsum("nmku,bmuv->bnkv", embeddings, values, optimize=True)
    outputs = np.einsum("bnhk,bnkv->bnhv", queries, lambdas, optimize=True)
    return outputs.reshape((batch,) + tuple(spatial_shape) + (num_heads * value_dim,))


def average_pool_same(inputs, pool_size=3, strides=2):
    """TensorFlow's 'same' average pool (padding excluded from the mean), any rank."""
    spatial_shape = inputs.shape[1:-1]
    output_shape = tuple(-(-size // strides) for size in spatial_shape)
    outputs = np.zeros(inputs.shape[:1] + output_shape + inputs.shape[-1:])
    for index in itertools.product(*(range(size) for size in output_shape)):
        windows = []
        for axis, out in enumerate(index):
            total_pad = max((output_shape[axis] - 1) * strides + pool_size - spatial_shape[axis], 0)
            start = out * strides - total_pad // 2
            windows.append(slice(max(start, 0), min(start + pool_size, spatial_shape[axis])))
        window = inputs[(slice(None),) + tuple(windows)]
        outputs[(slice(None),) + index] = window.mean(axis=tuple(range(1, window.ndim - 1)))
    return outputs
