"""LambdaMobileNetV2: MobileNet-v2 with two lightweight lambda blocks (Appendix D.3.2).

keras.applications.MobileNetV2 (``keras/src/applications/mobilenet_v2.py``; Sandler et
al. 2018) with the 10th and 16th of its 17 inverted bottlenecks replaced by the paper's
lightweight lambda block: the depthwise 3x3 conv becomes a lambda convolution (5x5
scope, |k| = 32, |h| = 4) and the block does not expand its input. Table 17: 3.21 M
parameters, 563 M FLOPs, 73.3% top-1 against MobileNet-v2's 3.50 M, 603 M, 72.7%.
docs/design.md, "LambdaMobileNetV2: reading Appendix D.3.2", says how the appendix is
read and counts the parameters.

Every other layer is keras.applications.MobileNetV2's, with its names (``Conv1``,
``block_3_expand``, ``block_15_project_BN``, ...), so its weights load by layer name
into the conv part; the lambda blocks keep Keras' 0-based block ids in their names
(``block_9_lambda``, the 10th bottleneck).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import layers

from lambda_keras.models.blocks import batch_norm, channel_axis, lambda_layer
from lambda_keras.models.input_shape import check_application_arguments
from lambda_keras.models.lambda_resnet import lambda_layer_config
from lambda_keras.models.model_config import (
    MOBILENET_V2,
    MOBILENET_V2_LAMBDA_LAYER,
    LambdaLayerConfig,
    ModelConfig,
)
from lambda_keras.models.variants import MOBILENET_V2_BLOCKS, MOBILENET_V2_LAMBDA_BLOCKS

# keras.applications.MobileNetV2's batch norms (TF-slim's decay 0.999, epsilon 1e-3).
NORM_MOMENTUM = 0.999
NORM_EPSILON = 1e-3


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``),
    one multiple more where rounding lost over 10%: the MobileNet channel rule, so that
    ``alpha`` gives the widths keras.applications gives."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _strided_padding(x) -> tuple[tuple[int, int], tuple[int, int]]:
    """Zero padding before a 3x3 stride-2 'valid' conv: one row and column at the end,
    and one more at the start of a side of known odd length, as keras.applications
    pads, so that its weights give its numbers."""
    spatial = x.shape[2:4] if channel_axis() == 1 else x.shape[1:3]
    return tuple((0 if size is None else size % 2, 1) for size in spatial)


def inverted_bottleneck(x, expansion: int, filters: int, strides: int, block_id: int, norm_options: Mapping[str, Any]):
    """MobileNet-v2's inverted bottleneck, ``[b, H, W, c] -> [b, H/s, W/s, filters]``.

    1x1 conv to ``expansion * c`` (left out for expansion 1, the first block) -> BN ->
    ReLU6 -> 3x3 depthwise conv with stride ``s`` -> BN -> ReLU6 -> 1x1 conv to
    ``filters`` -> BN, plus the input when the shape is kept. Layer names are
    keras.applications'.
    """
    inputs = x
    in_channels = x.shape[channel_axis()]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=f"{prefix}expand")(x)
        x = batch_norm(x, f"{prefix}expand_BN", norm_options)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    if strides == 2:
        x = layers.ZeroPadding2D(_strided_padding(x), name=f"{prefix}pad")(x)
    x = layers.DepthwiseConv2D(
        3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False, name=f"{prefix}depthwise"
    )(x)
    x = batch_norm(x, f"{prefix}depthwise_BN", norm_options)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    return _project(inputs, x, filters, strides, prefix, norm_options)


def lightweight_lambda_block(
    x, filters: int, block_id: int, lambda_options: Mapping[str, Any], norm_options: Mapping[str, Any]
):
    """The lightweight lambda block (Appendix D.3.2), ``[b, H, W, c] -> [b, H, W, filters]``.

    ``LambdaLayer(c)`` (a lambda convolution with the paper's 5x5 scope by default) ->
    BN -> ReLU6 -> 1x1 conv to ``filters`` -> BN, plus the input when ``filters == c``.
    "No expansion" is expansion 1, which builds no expansion conv, as in the first
    block here and in TF-slim's MobileNet (docs/design.md); the lambda layer takes the
    depthwise conv's place and keeps the BN and ReLU6 that followed it.
    """
    inputs = x
    prefix = f"block_{block_id}_"
    x = lambda_layer(x, x.shape[channel_axis()], norm_options, f"{prefix}lambda", **lambda_options)
    x = batch_norm(x, f"{prefix}lambda_BN", norm_options)
    x = layers.ReLU(6.0, name=f"{prefix}lambda_relu")(x)
    return _project(inputs, x, filters, 1, prefix, norm_options)


def _project(inputs, x, filters: int, strides: int, prefix: str, norm_options: Mapping[str, Any]):
    """The linear 1x1 projection and BN closing a block, and the residual where the
    block keeps its input's shape."""
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}project")(x)
    x = batch_norm(x, f"{prefix}project_BN", norm_options)
    if strides == 1 and inputs.shape[channel_axis()] == filters:
        x = layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def LambdaMobileNetV2(
    input_shape: tuple | None = None,
    alpha: float = 1.0,
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
    *,
    dropout_rate: float = 0.0,
    stochastic_depth_rate: float = 0.0,
    lambda_layer: LambdaLayerConfig | Mapping[str, Any] | None = None,
    norm_momentum: float = NORM_MOMENTUM,
    norm_epsilon: float = NORM_EPSILON,
    synchronized_batch_norm: bool = False,
    head_dtype: str | keras.DTypePolicy | None = None,
    **lambda_keywords: Any,
) -> keras.Model:
    """MobileNet-v2 with two lightweight lambda blocks (Appendix D.3.2, Table 17).

    keras.applications.MobileNetV2's network and arguments (in its order), with its
    10th and 16th inverted bottlenecks (Keras' ``block_9`` and ``block_15``) replaced
    by :func:`lightweight_lambda_block`. 3.21 M parameters at ``alpha=1`` (Table 17:
    3.21 M; keras.applications.MobileNetV2: 3.50 M).

    Input ``[batch, height, width, 3]`` (``[batch, 3, height, width]`` when
    ``keras.config.image_data_format()`` is ``"channels_first"``), RGB scaled to [-1, 1]
    as ``keras.applications.mobilenet_v2.preprocess_input`` does. Output ``[batch,
    classes]`` with ``include_top``; otherwise the last features ``[batch, height/32,
    width/32, 1280]`` (``1280 * alpha`` rounded for ``alpha > 1``), or ``[batch,
    1280]`` with ``pooling``.

    Args:
      input_shape: optional ``(height, width, channels)``, at least 32x32. Defaults
        to ``(224, 224, 3)`` with ``include_top`` and ``(None, None, 3)`` without.
      alpha: width multiplier, positive: every block's channels times ``alpha``,
        rounded to a multiple of 8 (keras.applications'; 1.0 is the paper's).
      include_top: whether to end in global average pooling, dropout and a dense
        classifier.
      weights: ``None`` (random initialisation) or the path to a ``.weights.h5`` or
        ``.keras`` file to load. ``"imagenet"`` raises: the paper published none.
      input_tensor: optional Keras tensor (output of ``keras.Input``) to use as the
        model's input.
      pooling: with ``include_top=False``: ``None`` (4-D output), ``"avg"`` or
        ``"max"`` (global pooling, 2-D output).
      classes: number of classes of the classifier (``include_top`` only).
      classifier_activation: activation of the classifier; ``None`` for logits.
      name: model name; None: ``lambda_mobilenetv2_<alpha>_<rows>``, as Keras names
        its MobileNetV2.
      dropout_rate: dropout before the classifier, in [0, 1) (the paper's MobileNet
        recipe uses 0.2).
      stochastic_depth_rate: 0 only; taken so that ``build_model`` passes every model
        config the same options (MobileNet-v2's blocks have no stochastic depth).
      lambda_layer: the lambda layers' arguments, a ``LambdaLayerConfig`` or a mapping
        of some of its fields over the paper's (``key_dim=32``, ``num_heads=4``,
        ``scope_size=5``); ``num_heads`` must divide the widths of the replaced
        blocks (``make_divisible(64 * alpha)``, ``make_divisible(160 * alpha)``).
      norm_momentum: momentum of every batch norm, the lambda layers' included
        (0.999, keras.applications').
      norm_epsilon: epsilon of every batch norm (1e-3, keras.applications').
      synchronized_batch_norm: batch statistics over the global batch under a
        TensorFlow distribution strategy.
      head_dtype: dtype policy of the classifier (e.g. ``"float32"`` under mixed
        precision); None: the global policy.
      **lambda_keywords: the keyword shorthands of ``lambda_layer``'s fields that
        :func:`~lambda_keras.models.LambdaResNet` takes (``key_dim``, ``scope_size``, ...).

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for an invalid argument, in keras.applications' order: weights,
        classes, input shape, pooling, then ``alpha`` and the model options.
    """
    input_shape = check_application_arguments(weights, include_top, classes, input_shape, pooling, default_size=224)
    config = ModelConfig(
        MOBILENET_V2,
        alpha=alpha,
        dropout_rate=dropout_rate,
        stochastic_depth_rate=stochastic_depth_rate,
        norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon,
        lambda_layer=lambda_layer_config(lambda_layer, lambda_keywords, MOBILENET_V2_LAMBDA_LAYER, MOBILENET_V2),
    )
    alpha = config.alpha
    norm_options = {"momentum": config.norm_momentum, "epsilon": config.norm_epsilon,
                    "synchronized": synchronized_batch_norm}
    lambda_options = config.lambda_layer.to_dict()

    if input_tensor is None:
        image = layers.Input(shape=input_shape, name="image")
    elif keras.backend.is_keras_tensor(input_tensor):
        image = input_tensor
    else:
        image = layers.Input(tensor=input_tensor, shape=input_shape, name="image")

    x = layers.Conv2D(make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="Conv1")(image)
    x = batch_norm(x, "bn_Conv1", norm_options)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)

    block_id = 0
    for expansion, channels, repeats, first_strides in MOBILENET_V2_BLOCKS:
        # Keras truncates before rounding: int(channels * alpha), then make_divisible.
        filters = make_divisible(int(channels * alpha))
        for repeat in range(repeats):
            strides = first_strides if repeat == 0 else 1
            if block_id + 1 in MOBILENET_V2_LAMBDA_BLOCKS:
                x = lightweight_lambda_block(x, filters, block_id, lambda_options, norm_options)
            else:
                x = inverted_bottleneck(x, expansion, filters, strides, block_id, norm_options)
            block_id += 1

    last_filters = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")(x)
    x = batch_norm(x, "Conv_1_bn", norm_options)
    x = layers.ReLU(6.0, name="out_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if config.dropout_rate > 0:
            x = layers.Dropout(config.dropout_rate, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, dtype=head_dtype, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    if name is None:
        rows = input_shape[1] if channel_axis() == 1 else input_shape[0]
        name = f"lambda_mobilenetv2_{alpha:0.2f}_{rows}"
    # Like keras.applications: a model on `input_tensor` starts at its sources.
    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else image
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


__all__ = ["LambdaMobileNetV2", "inverted_bottleneck", "lightweight_lambda_block", "make_divisible"]
