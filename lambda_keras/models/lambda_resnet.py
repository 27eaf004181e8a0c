"""The LambdaResNet factory: from a complete model config to a Keras model.

Paper: "LambdaNetworks: Modeling Long-Range Interactions Without Attention"
(Bello, ICLR 2021, arXiv 2102.08602). Section and table numbers refer to it;
docs/design.md gives the readings of it that the models follow.

One function, :func:`build_network`, builds every model from a complete generic
``ModelConfig``: a stem, four stages c2-c5 of bottleneck blocks (widths 64, 128,
256, 512; outputs 4x that) and an optional classifier. :func:`LambdaResNet` is the
public factory over it, taking the config's fields as arguments; the named
constructors (``constructors.py``) build their row of ``variants.VARIANTS``,
following keras.applications (``keras/src/applications/resnet.py``).

Block indices count from 1, both in Table 18 and in the layer names
(``c4_block3_lambda`` is the third block of stage c4; block 1 is the strided,
projection block), as in Keras' ResNets (``conv4_block1_...``); docs/design.md
says why Table 18 reads 1-based.

Parameter counts are trainable weights, what the paper and torchvision count: BN
scale and offset included, BN moving statistics not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import keras
from keras import layers

from lambda_keras.models import blocks
from lambda_keras.models.input_shape import check_application_arguments
from lambda_keras.models.model_config import (
    GENERIC,
    STAGE_NAMES,
    LambdaLayerConfig,
    ModelConfig,
)

# The constructors' keyword shorthands for fields of their `lambda_layer` (docs/models.md,
# Tables 9-12): the field's own name, with a `lambda_` prefix where the bare name would
# read as the whole model's (its batch norms, its pooling).
LAMBDA_LAYER_KEYWORDS = {
    **{name: name for name in ("key_dim", "num_heads", "intra_depth", "scope_size", "use_content",
                               "use_position", "key_normalization", "query_softmax")},
    "lambda_batch_norm": "use_batch_norm",
    "lambda_implementation": "implementation",
    "lambda_pool_size": "pool_size",
    "lambda_position_bias": "use_position_bias",
}


def lambda_layer_config(
    lambda_layer: LambdaLayerConfig | Mapping[str, Any] | None,
    keywords: Mapping[str, Any],
    default: LambdaLayerConfig,
    constructor: str,
) -> LambdaLayerConfig:
    """The lambda layers a constructor call asks for: ``lambda_layer`` (a config, or
    overrides of ``default``), then the keyword shorthands over it."""
    unknown = sorted(set(keywords) - set(LAMBDA_LAYER_KEYWORDS))
    if unknown:
        raise TypeError(f"{constructor}() got unexpected keyword argument(s) {unknown}; the lambda layers' "
                        f"arguments go in `lambda_layer` or are one of {sorted(LAMBDA_LAYER_KEYWORDS)}.")
    overrides = {LAMBDA_LAYER_KEYWORDS[keyword]: value for keyword, value in keywords.items()}
    if isinstance(lambda_layer, LambdaLayerConfig):
        return LambdaLayerConfig.from_dict(overrides, lambda_layer)
    if isinstance(lambda_layer, Mapping):
        overrides = {**lambda_layer, **overrides}
    elif lambda_layer is not None:
        overrides = lambda_layer  # not a mapping: from_dict says so
    return LambdaLayerConfig.from_dict(overrides, default)


def LambdaResNet(
    blocks_per_stage: Sequence[int],
    lambda_blocks: Sequence[Iterable[int]],
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet",
    *,
    base: str = "resnet_rs",
    width_multiplier: float = 1.0,
    se_ratio: float | Sequence[float] = 0.0,
    dropout_rate: float = 0.0,
    stochastic_depth_rate: float = 0.0,
    lambda_layer: LambdaLayerConfig | Mapping[str, Any] | None = None,
    activation: str = "relu",
    norm_momentum: float = 0.9,
    norm_epsilon: float = 1e-5,
    synchronized_batch_norm: bool = False,
    head_dtype: str | keras.DTypePolicy | None = None,
    **lambda_keywords: Any,
) -> keras.Model:
    """Builds a hybrid ResNet whose chosen bottlenecks use a lambda layer.

    Input ``[batch, height, width, 3]`` (``[batch, 3, height, width]`` when
    ``keras.config.image_data_format()`` is ``"channels_first"``; RGB scaled by
    :func:`lambda_keras.imagenet_utils.preprocess_input`). Output ``[batch,
    classes]`` with ``include_top``; otherwise the c5 features ``[batch, height/32,
    width/32, 2048]`` (2048 x ``width_multiplier``), or ``[batch, 2048]`` with
    ``pooling="avg"`` or ``"max"``.

    Every bottleneck is ResNet-v1 (1x1, 3x3, 1x1 convs; last BN gamma initialised
    to 0, Appendix A). In the blocks named by ``lambda_blocks`` the 3x3 conv is a
    ``LambdaLayer`` (a 3x3 stride-2 average pool follows it in the first block of
    c3-c5, Appendix E.1; 2x2 with ``lambda_pool_size=2``), followed by the BN and
    activation that followed the conv, and SE is left out. The first block of c3, c4
    and c5 downsamples.

    Args:
      blocks_per_stage: number of bottlenecks in c2, c3, c4, c5, e.g.
        ``(3, 4, 6, 3)`` for a 50-layer network.
      lambda_blocks: per stage, the 1-based indices of the blocks with a lambda
        layer, e.g. ``((), (), (3,), (1, 2, 3))``.
      include_top: whether to end in global average pooling, dropout and a dense
        classifier (``random_normal(stddev=0.01)`` kernel, as in [RS]).
      weights: ``None`` (random initialisation) or the path to a ``.weights.h5`` or
        ``.keras`` file to load. ``"imagenet"`` raises: no ImageNet weights were
        published for the paper's models.
      input_tensor: optional Keras tensor (output of ``keras.Input``) to use as the
        model's input.
      input_shape: optional ``(height, width, channels)``; at least 32x32. Defaults
        to ``(224, 224, 3)`` with ``include_top`` and ``(None, None, 3)`` without.
      pooling: with ``include_top=False``: ``None`` (4-D output), ``"avg"`` or
        ``"max"`` (global pooling, 2-D output).
      classes: number of classes of the classifier (``include_top`` only).
      classifier_activation: activation of the classifier; ``None`` for logits.
      name: model name.
      base: ``"resnet_rs"``: the ResNet-RS base of the LambdaResNets (ResNet-D stem
        whose max pool is a strided 3x3 conv, ResNet-D average-pool shortcut;
        Appendix E.1); ``"vanilla"``: ResNet-v1 with the 7x7 stem and strided 1x1
        projection shortcuts (the 90-epoch ResNet-50 of Section 5.1);
        ``"tiered"``: timm's ResNet-T, the tiered stem (3x3 convs with 24, 32, 64
        channels, then a 3x3 stride-2 max pool) and strided 1x1 projection shortcuts.
      width_multiplier: scales the bottleneck widths of c2-c5 (64, 128, 256, 512)
        and so the stage outputs (4x the widths); each must come out whole. The stem
        keeps its widths.
      se_ratio: squeeze-and-excitation ratio of the conv blocks, one number or one
        per stage; 0 disables SE. Lambda blocks never have SE.
      dropout_rate: dropout before the classifier (Table 20 uses 0.2-0.3).
      stochastic_depth_rate: stochastic depth of the residual branches, growing
        linearly per stage as in [RS]: ``rate * s / 5`` for stage ``c<s>``, so c5
        gets the full rate (Table 20 uses 0-0.2).
      lambda_layer: the lambda layers' arguments, a ``LambdaLayerConfig`` or a
        mapping of some of its fields (the others keep the paper's defaults:
        ``key_dim=16``, ``num_heads=4``, ``intra_depth=1``, ``scope_size=23``, softmax
        keys, batch norm on queries and values, a 3x3 pool after a strided layer).
      **lambda_keywords: shorthands for fields of ``lambda_layer``, applied over it:
        ``key_dim``, ``num_heads``, ``intra_depth`` (Tables 3 and 9), ``scope_size``
        (``None``: global position embeddings, a static input shape),
        ``use_content``, ``use_position`` (Table 10), ``key_normalization``,
        ``query_softmax`` (Table 12) under their own names; ``lambda_batch_norm``,
        ``lambda_implementation``, ``lambda_pool_size``, ``lambda_position_bias`` for
        ``use_batch_norm`` (Table 12's last row: False), ``implementation``,
        ``pool_size`` and ``use_position_bias``.
      activation: "relu" (the paper's) or "silu", after every BN but the last of a
        residual branch.
      norm_momentum: momentum of every batch norm, the lambda layers' included
        (0.9, [RS]'s ``MOVING_AVERAGE_DECAY``).
      norm_epsilon: epsilon of every batch norm (1e-5, [RS]'s ``EPSILON``).
      synchronized_batch_norm: every batch norm, the lambda layers' included,
        computes its statistics over the global batch under a TensorFlow
        distribution strategy (``BatchNormalization``'s ``synchronized``).
      head_dtype: dtype policy of the classifier, e.g. ``"float32"`` to keep the
        softmax in float32 under a mixed precision policy; None: the global policy.

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for an invalid argument, in keras.applications' order: weights,
        classes, input shape, pooling, then the architecture.
    """
    input_shape = check_application_arguments(weights, include_top, classes, input_shape, pooling, default_size=224)
    config = ModelConfig(
        GENERIC,
        blocks_per_stage=blocks_per_stage,
        lambda_blocks=lambda_blocks,
        base=base,
        width_multiplier=width_multiplier,
        activation=activation,
        se_ratio=se_ratio,
        dropout_rate=dropout_rate,
        stochastic_depth_rate=stochastic_depth_rate,
        norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon,
        lambda_layer=lambda_layer_config(lambda_layer, lambda_keywords, LambdaLayerConfig(), "LambdaResNet"),
    )
    return build_network(
        config,
        input_shape,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        synchronized_batch_norm=synchronized_batch_norm,
        head_dtype=head_dtype,
    )


# What build_network needs set; a named architecture's config leaves them to its row.
_COMPLETE_FIELDS = ("blocks_per_stage", "lambda_blocks", "base", "activation", "se_ratio", "norm_momentum",
                    "norm_epsilon")


def build_network(
    config: ModelConfig,
    input_shape: tuple,
    *,
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet",
    synchronized_batch_norm: bool = False,
    head_dtype: str | keras.DTypePolicy | None = None,
) -> keras.Model:
    """The network of a complete generic config, such as a row of
    ``variants.VARIANT_CONFIGS``: ``build_network(VARIANT_CONFIGS["LambdaResNet50"],
    (224, 224, 3))`` is LambdaResNet50's network.

    Args:
      config: a ``ModelConfig`` with architecture "LambdaResNet" and every option set
        (``build_model`` builds any config, through its constructor).
      input_shape: ``(height, width, 3)`` (``(3, height, width)`` under
        ``channels_first``), as ``check_application_arguments`` returns it.
      include_top, weights, input_tensor, pooling, classes, classifier_activation,
        name, synchronized_batch_norm, head_dtype: as for :func:`LambdaResNet`
        (``weights`` is loaded, not checked).

    Returns:
      A functional ``keras.Model``: ``[batch, height, width, 3] -> [batch, classes]``
      with ``include_top``, else the c5 features ``[batch, height/32, width/32, 2048]``
      (``[batch, 2048]`` with ``pooling``; 2048 x ``width_multiplier``).
    """
    unset = [key for key in _COMPLETE_FIELDS if getattr(config, key) is None]
    if config.architecture != GENERIC or unset:
        raise ValueError(
            f"build_network takes a complete generic config (architecture {GENERIC!r}, every option set, as in "
            f"variants.VARIANT_CONFIGS); build_model takes any. Received: architecture={config.architecture!r}, "
            f"unset: {unset}"
        )
    se_ratios = config.se_ratio if isinstance(config.se_ratio, tuple) else (config.se_ratio,) * 4
    lambda_options = config.lambda_layer.to_dict()
    norm_options = {"momentum": config.norm_momentum, "epsilon": config.norm_epsilon,
                    "synchronized": synchronized_batch_norm}
    base, activation = config.base, config.activation

    if input_tensor is None:
        image = layers.Input(shape=input_shape, name="image")
    elif keras.backend.is_keras_tensor(input_tensor):
        image = input_tensor
    else:
        image = layers.Input(tensor=input_tensor, shape=input_shape, name="image")

    if base == "resnet_rs":
        x = blocks.resnet_d_stem(image, norm_options)
    elif base == "tiered":
        x = blocks.tiered_stem(image, norm_options, activation)
    else:
        x = blocks.vanilla_stem(image, norm_options)

    for stage_index, (stage, width, num_blocks, stage_lambda_blocks, stage_se) in enumerate(
        zip(STAGE_NAMES, config.stage_widths(), config.blocks_per_stage, config.lambda_blocks, se_ratios)
    ):
        stage_number = stage_index + 2
        for block in range(1, num_blocks + 1):
            x = blocks.bottleneck_block(
                x,
                width,
                strides=2 if block == 1 and stage != "c2" else 1,
                name=f"{stage}_block{block}",
                projection=block == 1,
                resnet_d_shortcut=base == "resnet_rs",
                lambda_options=lambda_options if block in stage_lambda_blocks else None,
                se_ratio=stage_se,
                stochastic_depth_rate=config.stochastic_depth_rate * stage_number / 5,
                norm_options=norm_options,
                activation=activation,
            )

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if config.dropout_rate > 0:
            x = layers.Dropout(config.dropout_rate, name="top_dropout")(x)
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype=head_dtype,
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    # Like keras.applications: a model on `input_tensor` starts at its sources.
    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else image
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


__all__ = ["LambdaResNet", "build_network", "lambda_layer_config"]
