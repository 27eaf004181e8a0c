"""Analytic inference cost of a model: multiply-adds per example.

The convention of the ResNet papers, where ResNet-50 "has 4.1 GFLOPs": one
multiply-add counts once, and only convolutions, dense layers and lambda layers
count (batch norm folds into the preceding layer at inference; activations, pooling
and additions are memory traffic, not arithmetic). Profilers that read a TensorFlow
graph count ``Einsum`` as zero, so a lambda model needs its own count.
"""

from __future__ import annotations

import math

import keras

from lambda_keras.layers import LambdaLayer


def scope_pairs(length: int, scope_size: int | None, causal: bool = False) -> int:
    """(query, context) pairs along one axis whose offset lies inside the scope.

    Args:
      length: positions along the axis.
      scope_size: odd scope ``r``; None for the global scope.
      causal: count only context positions at or before the query.
    """
    half = length if scope_size is None else scope_size // 2
    pairs = 0
    for query in range(length):
        last = query if causal else min(length - 1, query + half)
        pairs += last - max(0, query - half) + 1
    return pairs


def lambda_layer_multiply_adds(layer: LambdaLayer, input_shape) -> int:
    """Multiply-adds of one example through ``layer`` (Figure 3 and Section 3.4).

    ``n d (h k + u k + u v)`` for the projections, ``m u k v`` for the content
    lambda, ``u k v`` per (query, context) pair inside the scope for the position
    lambdas (the lambda convolution without the zero padding's taps) and ``n h k v``
    to apply ``lambda_n = lambda^c + lambda^p_n`` to the queries.

    Args:
      layer: a built or unbuilt ``LambdaLayer``.
      input_shape: ``[batch, *spatial, channels]`` (or ``[batch, channels, *spatial]``
        for a channels-first layer) with a static spatial size.
    """
    input_shape = tuple(input_shape)
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        input_shape = (input_shape[0],) + input_shape[2:] + (input_shape[1],)
    spatial, channels = tuple(input_shape[1:-1]), input_shape[-1]
    if None in spatial or channels is None:
        raise ValueError(f"A static spatial size and channel count are needed. Received input_shape={input_shape}")
    positions = math.prod(spatial)
    filters = layer.filters or channels
    key_dim, heads, depth = layer.key_dim, layer.num_heads, layer.intra_depth
    value_dim = filters // heads
    projected = heads * key_dim + depth * value_dim + (depth * key_dim if layer.use_content else 0)
    total = positions * channels * projected + positions * heads * key_dim * value_dim
    if layer.use_content:
        total += positions * depth * key_dim * value_dim
    if layer.use_position:
        pairs = math.prod(scope_pairs(size, layer.scope_size, layer.causal) for size in spatial)
        total += pairs * depth * key_dim * value_dim
    return total


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one example through a functional ``model`` at inference.

    Counts ``Conv2D`` (groups included), ``DepthwiseConv2D``, ``Dense`` and
    ``LambdaLayer``; every other layer counts zero. The model's input must have a
    static spatial size.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, LambdaLayer):
            total += lambda_layer_multiply_adds(layer, layer.input.shape)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            output = layer.output.shape
            total += math.prod(output[1:]) * math.prod(layer.kernel_size)
        elif isinstance(layer, keras.layers.Conv2D):
            output = layer.output.shape
            in_channels = layer.input.shape[1 if layer.data_format == "channels_first" else -1]
            total += math.prod(output[1:]) * math.prod(layer.kernel_size) * in_channels // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            inputs = layer.input.shape
            total += math.prod(inputs[1:]) * layer.units
        elif isinstance(layer, keras.Model):
            total += multiply_adds(layer)
    return total
