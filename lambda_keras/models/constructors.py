"""The named constructors, keras.applications-style: one thin function per row of
``variants.VARIANTS``, and ``HybridResNet50``; the factories ``LambdaResNet`` and
``LambdaMobileNetV2`` come from their modules.

As in Keras' ``applications/resnet.py`` (``ResNet50`` calls ``ResNet`` with its stack
and its name), each named constructor keeps the standard signature and calls
:func:`_named_model` with its row's name and its default model name; the row's complete
config (``variants.VARIANT_CONFIGS``) is what it builds, with the options a caller
changes, through :func:`~lambda_keras.models.lambda_resnet.build_network`. Their
docstrings are written from the rows.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import keras

from lambda_keras.models.input_shape import check_application_arguments, obtain_input_shape
from lambda_keras.models.lambda_resnet import (
    LAMBDA_LAYER_KEYWORDS,
    LambdaResNet,
    build_network,
    lambda_layer_config,
)
from lambda_keras.models.mobilenet_v2 import LambdaMobileNetV2
from lambda_keras.models.model_config import (
    HYBRID_DEFAULT_PLACEMENT,
    STAGE_NAMES,
    ModelConfig,
    check_placement,
)
from lambda_keras.models.variants import (
    ARCHITECTURES,
    FACTORIES,
    MODEL_SPECS,
    PRETRAINED,
    VARIANTS,
    VARIANTS_BY_NAME,
    TimmSpec,
    Variant,
    hybrid_config,
)

# What a caller may change of a named model's config (its block layout is the row's),
# and the options that are the build's, not the config's.
CONFIG_OPTIONS = ("base", "activation", "se_ratio", "dropout_rate", "stochastic_depth_rate", "norm_momentum",
                  "norm_epsilon")
BUILD_OPTIONS = ("synchronized_batch_norm", "head_dtype")
ACTIVATION_NAMES = {"relu": "ReLU", "silu": "SiLU"}


def _build(
    constructor: str,
    config: ModelConfig,
    image_size: int,
    include_top: bool,
    weights: str | None,
    input_tensor,
    input_shape: tuple | None,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    name: str,
    options: Mapping[str, Any],
) -> keras.Model:
    """``config`` with the caller's ``options``, checked in keras.applications' order
    (the keyword names, published weights, weights, classes, input shape, pooling, then
    the config), as a model."""
    unknown = sorted(set(options) - {*CONFIG_OPTIONS, *BUILD_OPTIONS, *LAMBDA_LAYER_KEYWORDS, "lambda_layer"})
    if unknown:
        raise TypeError(f"{constructor}() got unexpected keyword argument(s) {unknown}; the model options are "
                        f"{sorted(CONFIG_OPTIONS)}, `lambda_layer` or one of {sorted(LAMBDA_LAYER_KEYWORDS)}, "
                        f"and {list(BUILD_OPTIONS)}.")
    pretrained = PRETRAINED.get(constructor)
    if pretrained is not None and isinstance(weights, str) and weights == "imagenet":
        raise ValueError(_converter_commands(constructor, pretrained))
    if input_shape is None and input_tensor is None and not include_top and config.lambda_layer.scope_size is None:
        # Global position embeddings are sized for one input: the default holds without the classifier too.
        input_shape = obtain_input_shape(None, image_size, min_size=32, require_flatten=True)
    input_shape = check_application_arguments(weights, include_top, classes, input_shape, pooling, image_size)
    keywords = {key: value for key, value in options.items() if key in LAMBDA_LAYER_KEYWORDS}
    config = dataclasses.replace(
        config,
        **{key: value for key, value in options.items() if key in CONFIG_OPTIONS},
        lambda_layer=lambda_layer_config(options.get("lambda_layer"), keywords, config.lambda_layer, constructor),
    )
    return build_network(
        config, input_shape, include_top=include_top, weights=weights, input_tensor=input_tensor, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation, name=name,
        **{key: value for key, value in options.items() if key in BUILD_OPTIONS},
    )


def _named_model(
    variant_name: str,
    include_top: bool,
    weights: str | None,
    input_tensor,
    input_shape: tuple | None,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    name: str,
    options: Mapping[str, Any],
) -> keras.Model:
    """The row ``variant_name`` of ``variants.VARIANTS`` as a model, for its constructor."""
    variant = VARIANTS_BY_NAME[variant_name]
    return _build(variant_name, variant.config, variant.image_size, include_top, weights, input_tensor,
                  input_shape, pooling, classes, classifier_activation, name, options)


def _converter_commands(constructor: str, pretrained: TimmSpec) -> str:
    """What ``weights="imagenet"`` says for a model with published weights: the commands
    that get and convert timm's weights (nothing is downloaded at run time)."""
    model = pretrained.model
    return (
        f"`weights='imagenet'` is not downloaded by lambda_keras. {constructor} is timm's {model}; "
        "where the internet is reachable, get and convert its ImageNet weights with: "
        "pip install huggingface_hub; "
        f"hf download {pretrained.pretrained} model.safetensors --local-dir {model}; "
        f"python -m lambda_keras.convert_timm {model}/model.safetensors --model {model} "
        f"--output {model}.weights.h5 "
        f"-- then pass weights='{model}.weights.h5'. Received: weights='imagenet'"
    )


def LambdaResNet50(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet50", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet50", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet101(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet101", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet101", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet152(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet152", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet152", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet200(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet200", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet200", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet270(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet270", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet270", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet350(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet350", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet350", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet420(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet420", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet420", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet101C4(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet101_c4", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet101C4", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet152C4(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet152_c4", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet152C4", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet200C4(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet200_c4", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet200C4", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet270C4(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet270_c4", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet270C4", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet350C4(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet350_c4", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet350C4", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet420C4(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet420_c4", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet420C4", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def ResNetRS50(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "resnet_rs50", **options: Any,
) -> keras.Model:
    return _named_model("ResNetRS50", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def ResNetRS101(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "resnet_rs101", **options: Any,
) -> keras.Model:
    return _named_model("ResNetRS101", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def ResNetRS152(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "resnet_rs152", **options: Any,
) -> keras.Model:
    return _named_model("ResNetRS152", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def ResNetRS200(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "resnet_rs200", **options: Any,
) -> keras.Model:
    return _named_model("ResNetRS200", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def ResNetRS270(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "resnet_rs270", **options: Any,
) -> keras.Model:
    return _named_model("ResNetRS270", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def ResNetRS350(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "resnet_rs350", **options: Any,
) -> keras.Model:
    return _named_model("ResNetRS350", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def ResNetRS420(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "resnet_rs420", **options: Any,
) -> keras.Model:
    return _named_model("ResNetRS420", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet26T(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet26t", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet26T", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet26RPT256(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet26rpt_256", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet26RPT256", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


def LambdaResNet50TS(
    include_top: bool = True, weights: str | None = None, input_tensor=None, input_shape: tuple | None = None,
    pooling: str | None = None, classes: int = 1000, classifier_activation: str | None = "softmax",
    name: str = "lambda_resnet50ts", **options: Any,
) -> keras.Model:
    return _named_model("LambdaResNet50TS", include_top, weights, input_tensor, input_shape, pooling, classes,
                        classifier_activation, name, options)


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
    return _build("HybridResNet50", hybrid_config(placement), 224, include_top, weights, input_tensor, input_shape,
                  pooling, classes, classifier_activation, name or f"hybrid_resnet50_{placement.lower()}", options)


# Constructor name -> function, for every name in variants.ARCHITECTURES.
CONSTRUCTORS: dict[str, Callable[..., keras.Model]] = {
    function.__name__: function
    for function in (
        LambdaResNet, HybridResNet50, LambdaMobileNetV2,
        LambdaResNet50, LambdaResNet101, LambdaResNet152, LambdaResNet200, LambdaResNet270, LambdaResNet350,
        LambdaResNet420,
        LambdaResNet101C4, LambdaResNet152C4, LambdaResNet200C4, LambdaResNet270C4, LambdaResNet350C4,
        LambdaResNet420C4,
        ResNetRS50, ResNetRS101, ResNetRS152, ResNetRS200, ResNetRS270, ResNetRS350, ResNetRS420,
        LambdaResNet26T, LambdaResNet26RPT256, LambdaResNet50TS,
    )
}
assert tuple(CONSTRUCTORS) == ARCHITECTURES, "a row of variants.VARIANTS has no constructor here, or one too many"


def _indices_text(indices: tuple[int, ...]) -> str:
    """(1, 2, 3, 4) -> "1-4"; (6, 12, 18) -> "6, 12, 18"."""
    if len(indices) > 2 and indices == tuple(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}-{indices[-1]}"
    return ", ".join(map(str, indices))


def _describe(config: ModelConfig) -> str:
    """A complete config in words, for a docstring."""
    base = {
        "resnet_rs": "ResNet-RS base (ResNet-D stem and shortcuts, Appendix E.1)",
        "tiered": "tiered stem and 1x1 projection shortcuts (timm's ResNet-T)",
        "vanilla": "ResNet-v1 base",
    }[config.base]
    stages = [f"{stage} blocks {_indices_text(indices)}"
              for stage, indices in zip(STAGE_NAMES, config.lambda_blocks) if indices]
    if stages:
        layer = config.lambda_layer
        scope = f"r={layer.scope_size}" if layer.scope_size else "global relative position embeddings"
        lambdas = f"lambda layers ({scope}, {layer.pool_size}x{layer.pool_size} pool) in {', '.join(stages)} (1-based)"
    else:
        lambdas = "no lambda layers"
    se_ratios = config.se_ratio if isinstance(config.se_ratio, tuple) else (config.se_ratio,) * 4
    se_stages = [stage for stage, ratio in zip(STAGE_NAMES, se_ratios) if ratio]
    if se_stages:
        where = "every stage" if len(se_stages) == 4 else " and ".join(se_stages)
        se = f"SE {max(se_ratios)} in {where} (``se_ratio=0``: none)"
    else:
        se = "no SE"
    activation = ACTIVATION_NAMES[config.activation]
    return f"{base}, blocks {list(config.blocks_per_stage)}, {lambdas}, {se}, {activation}"


def _docstring(variant: Variant) -> str:
    """The constructor's docstring, written from its row (and its published weights)."""
    paragraphs = [f"{variant.name}: {_describe(variant.config)}."]
    parameters = f"{variant.parameters / 1e6:.1f} M parameters"
    if variant.paper is not None:
        parameters += f" ({variant.paper[1]}: {variant.paper[0]} M)"
    paragraphs.append(f"{parameters}.")
    pretrained = PRETRAINED.get(variant.name)
    if pretrained is not None:
        paragraphs.append(
            f"Takes the converted ImageNet weights of ``{pretrained.pretrained}`` (timm's ``{pretrained.model}``, "
            f"top-1 {pretrained.top1} at {pretrained.image_size}, docs/models.md, 'Pretrained weights')."
        )
    # The first line follows the opening quotes; the others are indented like the Args.
    summary = "\n\n".join(
        textwrap.fill(paragraph, 88, initial_indent="    " if index else "", subsequent_indent="    ")
        for index, paragraph in enumerate(paragraphs)
    )
    size = variant.image_size
    return f"""{summary}

    Args:
      include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, name: the keras.applications arguments, see
        :func:`LambdaResNet`.
      **options: keyword-only model options of :func:`LambdaResNet` (``se_ratio``,
        ``dropout_rate``, ``stochastic_depth_rate``, ``lambda_layer`` (overrides of
        this model's lambda layers) or its keyword shorthands, ``activation``, the batch
        norm options, ``head_dtype``).

    Returns:
      A ``keras.Model``: ``[batch, {size}, {size}, 3] -> [batch, classes]`` by default.
    """


def _write_docstrings() -> None:
    for variant in VARIANTS:
        CONSTRUCTORS[variant.name].__doc__ = _docstring(variant)


_write_docstrings()

__all__ = ["CONSTRUCTORS", "MODEL_SPECS", *FACTORIES, *(variant.name for variant in VARIANTS)]
