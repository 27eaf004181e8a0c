"""From a model config, plain data, to a model: the one path that training, export and
the backbones take.

A model config is a mapping (a training config's ``model`` section, as YAML gives it)::

    architecture: LambdaResNet50        # a name in variants.ARCHITECTURES
    dropout_rate: 0.2                   # any keyword option of LambdaResNet ...
    lambda_layer: {scope_size: 7}       # ... and LambdaLayer arguments for its lambda layers
    blocks_per_stage: [1, 1, 1, 1]      # the generic factory "LambdaResNet" only
    lambda_blocks: [[], [], [1], [1]]   # the generic factory only
    placement: LLLL                     # HybridResNet50 only

Keys left out or None take the constructor's defaults. What differs between training
and serving (input size, classes, compute and head dtypes, synchronized batch norm) is
passed to :func:`build_model` and reaches the layers through the constructors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras

from lambda_keras.cli import UserError
from lambda_keras.models import lambda_resnet
from lambda_keras.models.variants import ARCHITECTURES

GENERIC = "LambdaResNet"
HYBRID = "HybridResNet50"
LAMBDA_LAYER_KEY = "lambda_layer"
# Keyword options a config may set, beyond `architecture` and the lambda layer's section.
_FACTORY_OPTIONS = ("se_ratio", "dropout_rate", "stochastic_depth_rate", "norm_momentum", "norm_epsilon")
_ONLY_FOR = {"blocks_per_stage": (GENERIC,), "lambda_blocks": (GENERIC,), "base": (GENERIC,), "placement": (HYBRID,)}
MODEL_CONFIG_KEYS = ("architecture", *_ONLY_FOR, *_FACTORY_OPTIONS, LAMBDA_LAYER_KEY)


def constructor_arguments(model_config: Mapping[str, Any]) -> tuple[Callable[..., keras.Model], tuple, dict]:
    """The constructor a model config names, its positional and its keyword arguments.

    Raises:
      ValueError: an unknown architecture or key, or a key the architecture does not
        take; the message names the key.
    """
    values = {key: value for key, value in model_config.items() if value is not None}
    architecture = values.pop("architecture", None)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"`architecture` must be one of {ARCHITECTURES}. Received: architecture={architecture!r}")
    unknown = sorted(set(values) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"Unknown model config key(s) {unknown}; valid keys: {sorted(MODEL_CONFIG_KEYS)}.")
    for key, architectures in _ONLY_FOR.items():
        if key in values and architecture not in architectures:
            raise ValueError(
                f"`{key}` applies only to {' and '.join(architectures)}, not {architecture}. "
                f"Received: {key}={values[key]!r}"
            )
    positional: tuple = ()
    if architecture == GENERIC:
        missing = [key for key in ("blocks_per_stage", "lambda_blocks") if key not in values]
        if missing:
            raise ValueError(f"The generic LambdaResNet factory needs {' and '.join(missing)}.")
        positional = (values.pop("blocks_per_stage"), values.pop("lambda_blocks"))
    values.update(_lambda_layer_options(values.pop(LAMBDA_LAYER_KEY, {})))
    return lambda_resnet.CONSTRUCTORS[architecture], positional, values


class ModelConfigError(UserError, ValueError):
    """An invalid model config; ``key`` is the section at fault ("lambda_layer") or None."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def validate_model_config(model_config: Mapping[str, Any]) -> None:
    """Checks a model config with the constructors' own rules, without building a model.

    Raises:
      ModelConfigError: naming the first invalid key or value.
    """
    try:
        lambda_resnet.check_options(**_lambda_layer_options(model_config.get(LAMBDA_LAYER_KEY) or {}))
    except ValueError as error:
        raise ModelConfigError(str(error), LAMBDA_LAYER_KEY) from None
    try:
        _check_model_config(model_config)
    except ValueError as error:
        raise ModelConfigError(str(error)) from None


def _check_model_config(model_config: Mapping[str, Any]) -> None:
    _, positional, options = constructor_arguments(model_config)
    if positional:
        lambda_resnet.check_stages(*positional)
    options = dict(options)
    if "placement" in options:
        lambda_resnet.check_placement(options.pop("placement"))
    lambda_resnet.check_options(**options)


def _lambda_layer_options(layer_arguments: Mapping[str, Any]) -> dict[str, Any]:
    """LambdaLayer arguments (a config's ``lambda_layer``) as the factory's keyword options."""
    if not isinstance(layer_arguments, Mapping):
        raise ValueError(f"`{LAMBDA_LAYER_KEY}` must be a mapping of LambdaLayer arguments. "
                         f"Received: {LAMBDA_LAYER_KEY}={layer_arguments!r}")
    options_of = {argument: option for option, argument in lambda_resnet.LAMBDA_LAYER_OPTIONS.items()}
    unknown = sorted(set(layer_arguments) - set(options_of))
    if unknown:
        raise ValueError(f"Unknown {LAMBDA_LAYER_KEY} argument(s) {unknown}; a model sets "
                         f"{sorted(options_of)} (the others follow from the architecture).")
    return {options_of[argument]: value for argument, value in layer_arguments.items()}


def build_model(
    model_config: Mapping[str, Any],
    *,
    input_shape: tuple[int | None, ...] | None = None,
    classes: int = 1000,
    include_top: bool = True,
    classifier_activation: str | None = "softmax",
    dtype_policy: str | keras.DTypePolicy | None = None,
    head_dtype: str | keras.DTypePolicy | None = None,
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """Builds the model a model config describes.

    Args:
      model_config: the mapping described in the module docstring.
      input_shape: ``(height, width, 3)`` (channels last); None: the constructor's default.
      classes: classifier outputs.
      include_top: end in the classifier (else the c5 features).
      classifier_activation: "softmax" for probabilities, None for logits.
      dtype_policy: the layers' dtype policy, e.g. "mixed_bfloat16" for training on
        TPU or "float32" for serving; None: Keras' global policy.
      head_dtype: the classifier's dtype policy (float32 keeps the softmax and the loss
        in float32 under mixed precision); None: the layers' policy.
      synchronized_batch_norm: batch statistics over the global batch under a
        TensorFlow distribution strategy.

    Returns:
      A functional ``keras.Model``, ``[batch, height, width, 3] -> [batch, classes]``.
    """
    constructor, positional, options = constructor_arguments(model_config)
    previous_policy = keras.config.dtype_policy()
    if dtype_policy is not None:
        # Layers take the global policy when created (the lambda layers' batch norms too).
        keras.config.set_dtype_policy(dtype_policy)
    try:
        return constructor(
            *positional,
            include_top=include_top,
            input_shape=input_shape,
            classes=classes,
            classifier_activation=classifier_activation,
            head_dtype=head_dtype,
            synchronized_batch_norm=synchronized_batch_norm,
            **options,
        )
    finally:
        keras.config.set_dtype_policy(previous_policy)
