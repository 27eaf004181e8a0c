"""LambdaResNets, their ResNet-RS baselines and the vanilla ResNet-50 hybrids.

Paper: "LambdaNetworks: Modeling Long-Range Interactions Without Attention"
(Bello, ICLR 2021, arXiv 2102.08602). Section and table numbers refer to it;
docs/design.md gives the readings of it that the models follow.

One factory, :func:`LambdaResNet`, builds every model: a stem, four stages c2-c5
of bottleneck blocks (widths 64, 128, 256, 512; outputs 4x that) and an
optional classifier. The named constructors only pick its arguments, following
keras.applications (``keras/src/applications/resnet.py``): a table of per-depth
settings (``variants.py``) and thin functions with the standard arguments.

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
from lambda_keras.models.input_shape import (
    obtain_input_shape,
    validate_classes,
    validate_pooling,
    validate_weights,
)
from lambda_keras.models.model_config import (
    GENERIC,
    HYBRID,
    HYBRID_DEFAULT_PLACEMENT,
    STAGE_NAMES,
    STAGE_WIDTHS,
    LambdaLayerConfig,
    ModelConfig,
    architecture_lambda_layer,
    block_layout,
    check_choice,
    check_placement,
)
from lambda_keras.models.variants import (
    FACTORIES,
    LAMBDA,
    LAMBDA_C4,
    MODEL_SPECS,
    RESNET_RS,
    TIMM,
    VARIANTS,
    VARIANTS_BY_NAME,
    Variant,
)

# SE sits in the c2/c3 conv blocks only: the published sizes match only without SE
# in c4/c5 (docs/design.md, "SE only in c2 and c3").
LAMBDA_RESNET_SE_RATIO = (0.25, 0.25, 0.0, 0.0)

# The constructors' keyword shorthands for fields of their `lambda_layer` (README,
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


def _lambda_layer(
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
    width/32, 2048]``, or ``[batch, 2048]`` with ``pooling="avg"`` or ``"max"``.

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
    validate_weights(weights)
    validate_classes(include_top, classes)
    input_shape = obtain_input_shape(
        input_shape, default_size=224, min_size=32, require_flatten=include_top
    )
    validate_pooling(pooling)
    config = ModelConfig(
        GENERIC,
        blocks_per_stage=blocks_per_stage,
        lambda_blocks=lambda_blocks,
        base=base,
        se_ratio=se_ratio,
        dropout_rate=dropout_rate,
        stochastic_depth_rate=stochastic_depth_rate,
        norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon,
        lambda_layer=_lambda_layer(lambda_layer, lambda_keywords, LambdaLayerConfig(), "LambdaResNet"),
    )
    check_choice("activation", activation, blocks.ACTIVATIONS)
    se_ratios = config.se_ratio if isinstance(config.se_ratio, tuple) else (config.se_ratio,) * 4
    lambda_options = config.lambda_layer.to_dict()
    norm_options = {"momentum": config.norm_momentum, "epsilon": config.norm_epsilon,
                    "synchronized": synchronized_batch_norm}

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
        zip(STAGE_NAMES, STAGE_WIDTHS, config.blocks_per_stage, config.lambda_blocks, se_ratios)
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
                stochastic_depth_rate=stochastic_depth_rate * stage_number / 5,
                norm_options=norm_options,
                activation=activation,
            )

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
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


def _named_constructor(function):
    """Registers a named constructor of :data:`VARIANTS` and writes its docstring."""
    variant = VARIANTS_BY_NAME[function.__name__]
    spec = MODEL_SPECS.get(variant.depth)
    if variant.family == TIMM:
        timm = variant.timm
        position = f"r={timm.scope_size}" if timm.scope_size else "global relative position embeddings, fixed 256x256"
        summary = (
            f"timm's ``{timm.model}``: tiered stem, blocks {list(timm.blocks)}, lambda layers ({position}) in "
            f"blocks {_blocks_text(timm.lambda_blocks)}, {'ReLU' if timm.activation == 'relu' else 'SiLU'}; takes the "
            f"converted ImageNet weights of ``{timm.pretrained}`` (top-1 {timm.top1} at 256, "
            "README 'Pretrained weights')."
        )
    elif variant.family == LAMBDA:
        summary = (
            f"LambdaResNet-{variant.depth} (Table 18): ResNet-RS base, blocks {list(spec['blocks'])}, lambda "
            f"layers in c4 blocks {list(spec['c4_lambda_blocks'])} (1-based) and every c5 block, SE 0.25 in c2/c3."
        )
    elif variant.family == LAMBDA_C4:
        summary = (
            f"LambdaResNet-{variant.depth}-C4 (Table 14): LambdaResNet-{variant.depth} with every 3x3 conv of c4 "
            "and c5 replaced by a lambda layer, SE 0.25 in c2/c3."
        )
    else:
        summary = (
            f"ResNet-RS-{variant.depth} (the conv baseline of Table 14): blocks {list(spec['blocks'])}, SE 0.25 "
            "in every stage by default, ``se_ratio=0`` for the 'wo/ SE' rows."
        )
    parameters = f"{variant.parameters / 1e6:.1f} M parameters"
    size = variant.timm.image_size if variant.timm else 224
    if variant.paper is not None:
        parameters += f" ({variant.paper[1]}: {variant.paper[0]} M)"
    function.__doc__ = f"""{summary} {parameters}.

    Args:
      include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, name: the keras.applications arguments, see
        :func:`LambdaResNet`.
      **options: keyword-only model options of :func:`LambdaResNet` (``se_ratio``,
        ``dropout_rate``, ``stochastic_depth_rate``, ``lambda_layer`` (overrides of
        this model's lambda layers) or its keyword shorthands, the batch norm
        options, ``head_dtype``).

    Returns:
      A ``keras.Model``: ``[batch, {size}, {size}, 3] -> [batch, classes]`` by default.
    """
    CONSTRUCTORS[variant.name] = function
    return function


def _blocks_text(lambda_blocks) -> str:
    """``((), (4,), (2, 4, 6), (2,))`` -> "c3: 4, c4: 2, 4, 6, c5: 2" (1-based)."""
    return "; ".join(
        f"{stage}: {', '.join(map(str, indices))}" for stage, indices in zip(STAGE_NAMES, lambda_blocks) if indices
    )


def _timm_weights_message(variant: Variant) -> str:
    """What ``weights="imagenet"`` says for a timm-family row: the commands that get
    and convert timm's weights (nothing is downloaded at run time)."""
    timm = variant.timm
    return (
        f"`weights='imagenet'` is not downloaded by lambda_keras. {variant.name} is timm's {timm.model}; "
        "where the internet is reachable, get and convert its ImageNet weights with: "
        "pip install huggingface_hub; "
        f"hf download {timm.pretrained} model.safetensors --local-dir {timm.model}; "
        f"python -m lambda_keras.convert_timm {timm.model}/model.safetensors --model {timm.model} "
        f"--output {timm.model}.weights.h5 "
        f"-- then pass weights='{timm.model}.weights.h5'. Received: weights='imagenet'"
    )


def _timm_options(variant: Variant, arguments: dict[str, Any]) -> dict[str, Any]:
    """A timm-family row's factory options; sets its default input size in ``arguments``."""
    timm = variant.timm
    if isinstance(arguments["weights"], str) and arguments["weights"] == "imagenet":
        raise ValueError(_timm_weights_message(variant))
    if arguments["input_shape"] is None and arguments["input_tensor"] is None and (
        arguments["include_top"] or timm.scope_size is None
    ):
        channels_first = keras.config.image_data_format() == "channels_first"
        size = timm.image_size
        arguments["input_shape"] = (3, size, size) if channels_first else (size, size, 3)
    return {"base": "tiered", "activation": timm.activation, "se_ratio": 0.0}


def _build_variant(variant_name: str, arguments: dict[str, Any]) -> keras.Model:
    """Builds a row of :data:`VARIANTS` from its constructor's ``locals()``."""
    variant: Variant = VARIANTS_BY_NAME[variant_name]
    options = arguments.pop("options")
    keywords = {key: options.pop(key) for key in list(options) if key in LAMBDA_LAYER_KEYWORDS}
    options["lambda_layer"] = _lambda_layer(
        options.pop("lambda_layer", None), keywords, architecture_lambda_layer(variant_name), variant_name
    )
    if variant.family == TIMM:
        options = {**_timm_options(variant, arguments), **options}
    else:
        options.setdefault("se_ratio", 0.25 if variant.family == RESNET_RS else LAMBDA_RESNET_SE_RATIO)
    return LambdaResNet(*block_layout(variant_name), **arguments, **options)


# Constructor name -> function, for every name in variants.ARCHITECTURES.
CONSTRUCTORS: dict[str, Any] = {GENERIC: LambdaResNet}

# The named constructors differ only in their row of VARIANTS and their default name;
# each keeps the full keras.applications signature, like keras.applications.ResNet50.


@_named_constructor
def LambdaResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                   classes=1000, classifier_activation="softmax", name="lambda_resnet50", **options: Any):
    return _build_variant("LambdaResNet50", locals())


@_named_constructor
def LambdaResNet101(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet101", **options: Any):
    return _build_variant("LambdaResNet101", locals())


@_named_constructor
def LambdaResNet152(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet152", **options: Any):
    return _build_variant("LambdaResNet152", locals())


@_named_constructor
def LambdaResNet200(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet200", **options: Any):
    return _build_variant("LambdaResNet200", locals())


@_named_constructor
def LambdaResNet270(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet270", **options: Any):
    return _build_variant("LambdaResNet270", locals())


@_named_constructor
def LambdaResNet350(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet350", **options: Any):
    return _build_variant("LambdaResNet350", locals())


@_named_constructor
def LambdaResNet420(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet420", **options: Any):
    return _build_variant("LambdaResNet420", locals())


@_named_constructor
def LambdaResNet101C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                      classes=1000, classifier_activation="softmax", name="lambda_resnet101_c4", **options: Any):
    return _build_variant("LambdaResNet101C4", locals())


@_named_constructor
def LambdaResNet152C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                      classes=1000, classifier_activation="softmax", name="lambda_resnet152_c4", **options: Any):
    return _build_variant("LambdaResNet152C4", locals())


@_named_constructor
def LambdaResNet200C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                      classes=1000, classifier_activation="softmax", name="lambda_resnet200_c4", **options: Any):
    return _build_variant("LambdaResNet200C4", locals())


@_named_constructor
def LambdaResNet270C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                      classes=1000, classifier_activation="softmax", name="lambda_resnet270_c4", **options: Any):
    return _build_variant("LambdaResNet270C4", locals())


@_named_constructor
def LambdaResNet350C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                      classes=1000, classifier_activation="softmax", name="lambda_resnet350_c4", **options: Any):
    return _build_variant("LambdaResNet350C4", locals())


@_named_constructor
def LambdaResNet420C4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                      classes=1000, classifier_activation="softmax", name="lambda_resnet420_c4", **options: Any):
    return _build_variant("LambdaResNet420C4", locals())


@_named_constructor
def ResNetRS50(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
               classes=1000, classifier_activation="softmax", name="resnet_rs50", **options: Any):
    return _build_variant("ResNetRS50", locals())


@_named_constructor
def ResNetRS101(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=1000, classifier_activation="softmax", name="resnet_rs101", **options: Any):
    return _build_variant("ResNetRS101", locals())


@_named_constructor
def ResNetRS152(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=1000, classifier_activation="softmax", name="resnet_rs152", **options: Any):
    return _build_variant("ResNetRS152", locals())


@_named_constructor
def ResNetRS200(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=1000, classifier_activation="softmax", name="resnet_rs200", **options: Any):
    return _build_variant("ResNetRS200", locals())


@_named_constructor
def ResNetRS270(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=1000, classifier_activation="softmax", name="resnet_rs270", **options: Any):
    return _build_variant("ResNetRS270", locals())


@_named_constructor
def ResNetRS350(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=1000, classifier_activation="softmax", name="resnet_rs350", **options: Any):
    return _build_variant("ResNetRS350", locals())


@_named_constructor
def ResNetRS420(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=1000, classifier_activation="softmax", name="resnet_rs420", **options: Any):
    return _build_variant("ResNetRS420", locals())


@_named_constructor
def LambdaResNet26T(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                    classes=1000, classifier_activation="softmax", name="lambda_resnet26t", **options: Any):
    return _build_variant("LambdaResNet26T", locals())


@_named_constructor
def LambdaResNet26RPT256(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                         classes=1000, classifier_activation="softmax", name="lambda_resnet26rpt_256",
                         **options: Any):
    return _build_variant("LambdaResNet26RPT256", locals())


@_named_constructor
def LambdaResNet50TS(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                     classes=1000, classifier_activation="softmax", name="lambda_resnet50ts", **options: Any):
    return _build_variant("LambdaResNet50TS", locals())


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
    placement: str = HYBRID_DEFAULT_PLACEMENT,
    **options: Any,
) -> keras.Model:
    """Vanilla ResNet-50 with a 3x3 conv or a lambda layer per stage (Section 5.1).

    The 90-epoch ResNet-50 of Tables 3, 9, 10, 12 and 13: ResNet-v1 with the 7x7
    stem and max pool, strided 1x1 projection shortcuts, no SE, and in each stage
    c2, c3, c4, c5 either the 3x3 convs (``C``) or lambda layers (``L``) in every
    block. ``"CCCC"`` is the torchvision ResNet-50 (25,557,032 parameters),
    ``"LLLL"`` the paper's "Lambda layer" ResNet-50 (14,995,592, printed 15.0 M).
    Every Table 13 placement matches its printed count except ``CCLL`` (15.56 M,
    printed 15.4; docs/design.md explains the misprint).

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
      **options: keyword-only model options of :func:`LambdaResNet` (``lambda_layer``
        or its keyword shorthands, ``dropout_rate``, ``stochastic_depth_rate``, ``norm_momentum``,
        ``norm_epsilon``, ``se_ratio``; default no SE, no dropout).

    Returns:
      A ``keras.Model``: ``[batch, 224, 224, 3] -> [batch, classes]`` by default.
    """
    check_placement(placement)
    return LambdaResNet(
        *block_layout(HYBRID, placement=placement),
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


CONSTRUCTORS[HYBRID] = HybridResNet50
assert set(CONSTRUCTORS) == set(FACTORIES) | set(VARIANTS_BY_NAME), "a VARIANTS row has no constructor"

__all__ = ["CONSTRUCTORS", "MODEL_SPECS", *FACTORIES, *(variant.name for variant in VARIANTS)]
