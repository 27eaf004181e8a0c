"""LambdaResNets, their ResNet-RS baselines and the vanilla ResNet-50 hybrids.

Paper: "LambdaNetworks: Modeling Long-Range Interactions Without Attention"
(Bello, ICLR 2021, arXiv 2102.08602). Section and table numbers refer to it;
docs/design.md gives the readings of it that the models follow.

One factory, :func:`LambdaResNet`, builds every model: a stem, four stages c2-c5
of bottleneck blocks (widths 64, 128, 256, 512; outputs 4x that) and an
optional classifier. The named constructors only pick its arguments, following
keras.applications (``keras/src/applications/resnet.py``): a table of per-depth
settings and thin functions with the standard arguments.

Block indices count from 1, both in Table 18 and in the layer names
(``c4_block3_lambda`` is the third block of stage c4; block 1 is the strided,
projection block). The paper does not say which convention Table 18 uses, and
parameter counts cannot tell (docs/design.md). We read it as 1-based because
then the table is uniformly spaced from the start of the stage in every row:
the number of conv blocks before the first lambda block equals the number
between consecutive lambda blocks (c4 of LambdaResNet-101 with 23 blocks and
lambda blocks 6, 12, 18: 5 | 5 | 5 | 5 conv blocks); read 0-based, the first
gap would be one block longer in every row. Keras' ResNets also number blocks
from 1 (``conv4_block1_...``).

Parameter counts in this package are the trainable weights, which is what the
paper and torchvision count (``sum(p.numel() for p in model.parameters())``):
BN scale and offset are included, BN moving statistics are not (they are
buffers in PyTorch, non-trainable weights in Keras).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
from keras import layers

from lambda_keras.models import blocks
from lambda_keras.models.input_shape import (
    obtain_input_shape,
    validate_classes,
    validate_pooling,
    validate_weights,
)

STAGE_NAMES = ("c2", "c3", "c4", "c5")
STAGE_WIDTHS = (64, 128, 256, 512)
BASES = ("resnet_rs", "vanilla")

# Table 18: blocks per stage c2-c5 and the (1-based) c4 blocks with a lambda
# layer; every c5 block has one too. The block counts are ResNet-RS's
# (``model_params`` in [RS]), so the ResNetRS baselines share this table.
MODEL_SPECS: dict[int, dict[str, tuple[int, ...]]] = {
    50: {"blocks": (3, 4, 6, 3), "c4_lambda_blocks": (3,)},
    101: {"blocks": (3, 4, 23, 3), "c4_lambda_blocks": (6, 12, 18)},
    152: {"blocks": (3, 8, 36, 3), "c4_lambda_blocks": (5, 10, 15, 20, 25, 30)},
    200: {"blocks": (3, 24, 36, 3), "c4_lambda_blocks": (5, 10, 15, 20, 25, 30)},
    270: {"blocks": (4, 29, 53, 4), "c4_lambda_blocks": (8, 16, 24, 32, 40, 48)},
    350: {"blocks": (4, 36, 72, 4), "c4_lambda_blocks": (10, 20, 30, 40, 50, 60)},
    420: {"blocks": (4, 44, 87, 4), "c4_lambda_blocks": (10, 20, 30, 40, 50, 60, 70, 80)},
}

# SE sits in the c2/c3 conv blocks only. Appendix E.1 only excludes the lambda
# blocks, but the published sizes (LambdaResNet-101 36.9 M, -152 51.4 M) are
# matched exactly only without SE anywhere in c4/c5; with SE in c4's conv blocks
# they would be 47.4 M / 67.2 M (docs/design.md, "SE only in c2 and c3").
LAMBDA_RESNET_SE_RATIO = (0.25, 0.25, 0.0, 0.0)


def _check_stages(
    blocks_per_stage, lambda_blocks, se_ratio
) -> tuple[tuple[int, ...], tuple[frozenset, ...], tuple[float, ...]]:
    """Validates the architecture arguments; returns them as per-stage tuples."""
    blocks_per_stage = tuple(blocks_per_stage)
    if len(blocks_per_stage) != 4 or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks_per_stage
    ):
        raise ValueError(
            "`blocks_per_stage` must be four positive integers, the blocks of stages "
            f"c2, c3, c4, c5. Received: blocks_per_stage={blocks_per_stage!r}"
        )
    lambda_blocks = tuple(lambda_blocks)
    if len(lambda_blocks) != 4:
        raise ValueError(
            "`lambda_blocks` must give one collection of 1-based block indices per "
            f"stage c2, c3, c4, c5. Received: lambda_blocks={lambda_blocks!r}"
        )
    lambda_sets = []
    for stage, num_blocks, indices in zip(STAGE_NAMES, blocks_per_stage, lambda_blocks):
        indices = frozenset(indices)
        if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= num_blocks for i in indices):
            raise ValueError(
                f"`lambda_blocks` for stage {stage} must be block indices in "
                f"[1, {num_blocks}] (1-based). Received: {sorted(indices, key=repr)!r}"
            )
        lambda_sets.append(indices)
    if isinstance(se_ratio, (int, float)):
        se_ratio = (se_ratio,) * 4
    se_ratio = tuple(float(r) for r in se_ratio)
    if len(se_ratio) != 4 or any(not 0.0 <= r <= 1.0 for r in se_ratio):
        raise ValueError(
            "`se_ratio` must be a number in [0, 1] or four of them (one per stage). "
            f"Received: se_ratio={se_ratio!r}"
        )
    return blocks_per_stage, tuple(lambda_sets), se_ratio


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
    se_ratio: float | Sequence[float] = 0.0,
    dropout_rate: float = 0.0,
    stochastic_depth_rate: float = 0.0,
    key_dim: int = 16,
    num_heads: int = 4,
    intra_depth: int = 1,
    scope_size: int | None = 23,
    use_content: bool = True,
    use_position: bool = True,
    key_normalization: str = "softmax",
    query_softmax: bool = False,
    lambda_batch_norm: bool = True,
    lambda_implementation: str = "auto",
    norm_momentum: float = 0.9,
    norm_epsilon: float = 1e-5,
) -> keras.Model:
    """Builds a hybrid ResNet whose chosen bottlenecks use a lambda layer.

    Input ``[batch, height, width, 3]`` (``[batch, 3, height, width]`` when
    ``keras.config.image_data_format()`` is ``"channels_first"``; RGB scaled by
    :func:`lambda_keras.imagenet_utils.preprocess_input`). Output ``[batch,
    classes]`` with ``include_top``; otherwise the c5 features ``[batch, height/32,
    width/32, 2048]``, or ``[batch, 2048]`` with ``pooling="avg"`` or ``"max"``.

    Every bottleneck is ResNet-v1 (1x1, 3x3, 1x1 convs; last BN gamma initialised
    to 0, Appendix A). In the blocks named by ``lambda_blocks`` the 3x3 conv is a
    ``LambdaLayer`` (a 3x3 stride-2 average pool follows it in the first block of
    c3-c5, Appendix E.1) and SE is left out. The first block of c3, c4 and c5
    downsamples.

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
        projection shortcuts (the 90-epoch ResNet-50 of Section 5.1).
      se_ratio: squeeze-and-excitation ratio of the conv blocks, one number or one
        per stage; 0 disables SE. Lambda blocks never have SE.
      dropout_rate: dropout before the classifier (Table 20 uses 0.2-0.3).
      stochastic_depth_rate: stochastic depth of the residual branches, growing
        linearly per stage as in [RS]: ``rate * s / 5`` for stage ``c<s>``, so c5
        gets the full rate (Table 20 uses 0-0.2).
      key_dim: lambda query/key depth ``|k|`` (paper default 16).
      num_heads: lambda queries ``|h|`` (paper default 4).
      intra_depth: lambda intra-depth ``|u|`` (default 1; Table 9 uses 4 with a 7x7
        scope).
      scope_size: odd side ``r`` of the local position scope, 23 in the paper;
        ``None`` for global position embeddings (needs a static input shape).
      use_content: whether the lambda layers compute content lambdas (Table 10).
      use_position: whether the lambda layers compute position lambdas (Table 10).
      key_normalization: keys normalised over the context by "softmax" (the
        paper's), "l2" or "none" (Table 12).
      query_softmax: also softmax the queries over the key depth (Table 12).
      lambda_batch_norm: batch norm on the lambda layers' queries and values; False
        is Table 12's last row.
      lambda_implementation: ``LambdaLayer`` implementation, "auto", "einsum",
        "conv" or "banded" (same numbers; speed differs).
      norm_momentum: momentum of every batch norm, the lambda layers' included
        (0.9, [RS]'s ``MOVING_AVERAGE_DECAY``).
      norm_epsilon: epsilon of every batch norm (1e-5, [RS]'s ``EPSILON``).

    Returns:
      A functional ``keras.Model``.

    Raises:
      ValueError: for an invalid argument, in keras.applications' order: weights,
        classes, input shape, pooling, then the architecture.
    """
    validate_weights(weights)
    validate_classes(include_top, classes)
    input_shape = obtain_input_shape(
        input_shape, default_size=224, min_size=32, require_flatten=include_top
    )
    validate_pooling(pooling)
    blocks_per_stage, lambda_sets, se_ratios = _check_stages(blocks_per_stage, lambda_blocks, se_ratio)
    if base not in BASES:
        raise ValueError(f"`base` must be one of {BASES}. Received: base={base!r}")
    if not 0.0 <= stochastic_depth_rate < 1.0:
        raise ValueError(
            f"`stochastic_depth_rate` must be in [0, 1). Received: {stochastic_depth_rate!r}"
        )
    lambda_options = {
        "key_dim": key_dim,
        "num_heads": num_heads,
        "intra_depth": intra_depth,
        "scope_size": scope_size,
        "use_content": use_content,
        "use_position": use_position,
        "key_normalization": key_normalization,
        "query_softmax": query_softmax,
        "use_batch_norm": lambda_batch_norm,
        "implementation": lambda_implementation,
    }

    if input_tensor is None:
        image = layers.Input(shape=input_shape, name="image")
    elif keras.backend.is_keras_tensor(input_tensor):
        image = input_tensor
    else:
        image = layers.Input(tensor=input_tensor, shape=input_shape, name="image")

    if base == "resnet_rs":
        x = blocks.resnet_d_stem(image, norm_momentum, norm_epsilon)
    else:
        x = blocks.vanilla_stem(image, norm_momentum, norm_epsilon)

    for stage_index, (stage, width, num_blocks, lambda_set, stage_se) in enumerate(
        zip(STAGE_NAMES, STAGE_WIDTHS, blocks_per_stage, lambda_sets, se_ratios)
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
                lambda_options=lambda_options if block in lambda_set else None,
                se_ratio=stage_se,
                stochastic_depth_rate=stochastic_depth_rate * stage_number / 5,
                momentum=norm_momentum,
                epsilon=norm_epsilon,
            )

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
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


def _lambda_resnet(depth: int, c4_all: bool, name: str, args: dict, options: dict) -> keras.Model:
    """A LambdaResNet of Table 18 (``c4_all=False``) or its C4 variant."""
    spec = MODEL_SPECS[depth]
    c4_blocks = range(1, spec["blocks"][2] + 1) if c4_all else spec["c4_lambda_blocks"]
    options.setdefault("se_ratio", LAMBDA_RESNET_SE_RATIO)
    return LambdaResNet(
        spec["blocks"],
        ((), (), c4_blocks, range(1, spec["blocks"][3] + 1)),
        name=name,
        **args,
        **options,
    )


def _resnet_rs(depth: int, name: str, args: dict, options: dict) -> keras.Model:
    """The conv-only ResNet-RS baseline of a depth, SE 0.25 in every stage by default."""
    options.setdefault("se_ratio", 0.25)
    return LambdaResNet(MODEL_SPECS[depth]["blocks"], ((), (), (), ()), name=name, **args, **options)


_ARGS_DOC = """
    Args:
      include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, name: the keras.applications arguments, see
        :func:`LambdaResNet`.
      **options: keyword-only model options of :func:`LambdaResNet` (``se_ratio``,
        ``dropout_rate``, ``stochastic_depth_rate``, the lambda options,
        ``norm_momentum``, ``norm_epsilon``).

    Returns:
      A ``keras.Model``: ``[batch, 224, 224, 3] -> [batch, classes]`` by default.
"""


def _document(summary: str):
    def decorate(function):
        function.__doc__ = summary + "\n" + _ARGS_DOC
        return function

    return decorate


_LAMBDA_SUMMARY = (
    "LambdaResNet-{depth} (Table 18): ResNet-RS base, blocks {blocks}, lambda layers in "
    "c4 blocks {c4} (1-based) and every c5 block, SE 0.25 in c2/c3. {params}"
)
_C4_SUMMARY = (
    "LambdaResNet-{depth}-C4 (Table 14): LambdaResNet-{depth} with every 3x3 conv of c4 "
    "and c5 replaced by a lambda layer, SE 0.25 in c2/c3. {params}"
)
_RS_SUMMARY = (
    "ResNet-RS-{depth} (the conv baseline of Table 14): blocks {blocks}, SE 0.25 in every "
    "stage by default, ``se_ratio=0`` for the 'wo/ SE' rows. {params}"
)


def _summary(template: str, depth: int, params: str) -> str:
    spec = MODEL_SPECS[depth]
    return template.format(
        depth=depth, blocks=list(spec["blocks"]), c4=list(spec["c4_lambda_blocks"]), params=params
    )


def _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation):
    return {
        "include_top": include_top,
        "weights": weights,
        "input_tensor": input_tensor,
        "input_shape": input_shape,
        "pooling": pooling,
        "classes": classes,
        "classifier_activation": classifier_activation,
    }


# The named constructors below differ only in depth and name; each keeps the full
# keras.applications signature so that it reads like keras.applications.ResNet50.


@_document(_summary(_LAMBDA_SUMMARY, 50, "19.0 M parameters."))
def LambdaResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                   classes=1000, classifier_activation="softmax", name="lambda_resnet50", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(50, False, name, args, options)


@_document(_summary(_LAMBDA_SUMMARY, 101, "36.9 M parameters (Table 14: 36.9 M)."))
def LambdaResNet101(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet101", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(101, False, name, args, options)


@_document(_summary(_LAMBDA_SUMMARY, 152, "51.4 M parameters (Table 14: 51.4 M)."))
def LambdaResNet152(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet152", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(152, False, name, args, options)


@_document(_summary(_LAMBDA_SUMMARY, 200, "58.0 M parameters."))
def LambdaResNet200(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet200", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(200, False, name, args, options)


@_document(_summary(_LAMBDA_SUMMARY, 270, "81.4 M parameters."))
def LambdaResNet270(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet270", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(270, False, name, args, options)


@_document(_summary(_LAMBDA_SUMMARY, 350, "105.5 M parameters."))
def LambdaResNet350(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet350", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(350, False, name, args, options)


@_document(_summary(_LAMBDA_SUMMARY, 420, "124.4 M parameters."))
def LambdaResNet420(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet420", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(420, False, name, args, options)


@_document(_summary(_C4_SUMMARY, 101, "26.0 M parameters (Table 14: 26.0 M)."))
def LambdaResNet101C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet101_c4", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(101, True, name, args, options)


@_document(_summary(_C4_SUMMARY, 152, "35.1 M parameters (Table 14: 35.1 M)."))
def LambdaResNet152C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet152_c4", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(152, True, name, args, options)


@_document(_summary(_C4_SUMMARY, 200, "41.7 M parameters (Table 15: 42 M)."))
def LambdaResNet200C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet200_c4", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(200, True, name, args, options)


@_document(_summary(_C4_SUMMARY, 270, "55.8 M parameters."))
def LambdaResNet270C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet270_c4", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(270, True, name, args, options)


@_document(_summary(_C4_SUMMARY, 350, "69.6 M parameters."))
def LambdaResNet350C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet350_c4", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(350, True, name, args, options)


@_document(_summary(_C4_SUMMARY, 420, "81.4 M parameters."))
def LambdaResNet420C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet420_c4", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _lambda_resnet(420, True, name, args, options)


@_document(_summary(_RS_SUMMARY, 50, "35.7 M parameters with SE."))
def ResNetRS50(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs50", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _resnet_rs(50, name, args, options)


@_document(_summary(_RS_SUMMARY, 101, "63.6 M parameters with SE, 44.6 M without (Table 14: 63.6 / 44.6 M)."))
def ResNetRS101(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs101", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _resnet_rs(101, name, args, options)


@_document(_summary(_RS_SUMMARY, 152, "86.6 M parameters with SE, 60.2 M without (Table 14: 86.6 / 60.2 M)."))
def ResNetRS152(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs152", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _resnet_rs(152, name, args, options)


@_document(_summary(_RS_SUMMARY, 200, "93.2 M parameters with SE."))
def ResNetRS200(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs200", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _resnet_rs(200, name, args, options)


@_document(_summary(_RS_SUMMARY, 270, "129.9 M parameters with SE."))
def ResNetRS270(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs270", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _resnet_rs(270, name, args, options)


@_document(_summary(_RS_SUMMARY, 350, "164.0 M parameters with SE."))
def ResNetRS350(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs350", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _resnet_rs(350, name, args, options)


@_document(_summary(_RS_SUMMARY, 420, "191.9 M parameters with SE."))
def ResNetRS420(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs420", **options: Any):
    args = _applications_args(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation)
    return _resnet_rs(420, name, args, options)


# Vanilla ResNet-50 stage sizes (He et al. 2016), the network of Tables 3, 9-13.
RESNET50_BLOCKS = (3, 4, 6, 3)


def HybridResNet50(
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
    *,
    placement: str = "LLLL",
    **options: Any,
) -> keras.Model:
    """Vanilla ResNet-50 with a 3x3 conv or a lambda layer per stage (Section 5.1).

    The 90-epoch ResNet-50 of Tables 3, 9, 10, 12 and 13: ResNet-v1 with the 7x7
    stem and max pool, strided 1x1 projection shortcuts, no SE, and in each stage
    c2, c3, c4, c5 either the 3x3 convs (``C``) or lambda layers (``L``) in every
    block. ``"CCCC"`` is the torchvision ResNet-50 (25,557,032 parameters),
    ``"LLLL"`` the paper's "Lambda layer" ResNet-50 (14,995,592, printed 15.0 M).

    Table 13 rows by placement (our count / the paper's): ``LCCC`` 25.5 / 25.5,
    ``LLCC`` 25.0 / 25.0, ``LLLC`` 21.7 / 21.7, ``CLLL`` 15.1 / 15.1, ``CCCL``
    18.8 / 18.8, ``CCLL`` 15.56 / 15.4. ``CCLL`` is the one row we cannot match,
    and no architecture can match it together with the others: parameters add up
    per stage, so ``CCLL = LLLL + (CCCC - LLCC)`` whatever each stage's layers are,
    and the paper's own rows give 15.0 + (25.6 - 25.0) = 15.6 (ours: 14,995,592 +
    564,144 = 15,559,736). We take the printed 15.4 for a misprint (docs/design.md).

    Table 3's ``|u|=4`` row (16.04 M, printed 16.0) is
    ``placement="LLLL", intra_depth=4, scope_size=7``; Table 9 varies ``key_dim``
    and ``num_heads``; Table 10 ``use_content`` / ``use_position``; Table 12
    ``key_normalization="l2"`` or ``"none"``, ``query_softmax=True`` and
    ``lambda_batch_norm=False``.

    Args:
      include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation: the keras.applications arguments, see
        :func:`LambdaResNet`.
      name: model name; defaults to ``"hybrid_resnet50_<placement>"``.
      placement: four characters, ``C`` or ``L``, for stages c2, c3, c4, c5.
      **options: keyword-only model options of :func:`LambdaResNet` (the lambda
        options, ``dropout_rate``, ``stochastic_depth_rate``, ``norm_momentum``,
        ``norm_epsilon``, ``se_ratio``; default no SE, no dropout).

    Returns:
      A ``keras.Model``: ``[batch, 224, 224, 3] -> [batch, classes]`` by default.
    """
    if not isinstance(placement, str) or len(placement) != 4 or set(placement) - {"C", "L"}:
        raise ValueError(
            "`placement` must be four characters, 'C' (3x3 conv) or 'L' (lambda layer), "
            f"for stages c2, c3, c4, c5, e.g. 'CCLL'. Received: placement={placement!r}"
        )
    lambda_blocks = tuple(
        range(1, num_blocks + 1) if choice == "L" else ()
        for choice, num_blocks in zip(placement, RESNET50_BLOCKS)
    )
    return LambdaResNet(
        RESNET50_BLOCKS,
        lambda_blocks,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name or f"hybrid_resnet50_{placement.lower()}",
        base="vanilla",
        **options,
    )
