"""From a model config to a model: the one path that training, export and the backbones take.

A model config is a :class:`~lambda_keras.models.model_config.ModelConfig`, or the plain
mapping of one (a training config's ``model`` section, as YAML gives it; see
``model_config.py``). What differs between training and serving (input size, classes,
compute and head dtypes, synchronized batch norm) is passed to :func:`build_model` and
reaches the layers through the constructors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras

from lambda_keras.models.constructors import CONSTRUCTORS
from lambda_keras.models.model_config import GENERIC, ModelConfig, ModelConfigError

__all__ = ["ModelConfigError", "build_model", "constructor_arguments", "validate_model_config"]

# Keyword options a config passes to its constructor when set (None: the constructor's default).
_OPTIONS = ("alpha", "placement", "base", "width_multiplier", "activation", "se_ratio", "dropout_rate",
            "stochastic_depth_rate", "norm_momentum", "norm_epsilon")


def validate_model_config(model_config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """The model config, checked without building a model (``ModelConfig.from_dict``).

    Raises:
      ModelConfigError: naming the first invalid key (``.key``) and value.
    """
    if isinstance(model_config, ModelConfig):
        return model_config
    return ModelConfig.from_dict(model_config)


def constructor_arguments(
    model_config: ModelConfig | Mapping[str, Any],
) -> tuple[Callable[..., keras.Model], tuple, dict[str, Any]]:
    """The constructor a model config names, its positional and its keyword arguments."""
    model_config = validate_model_config(model_config)
    options = {key: getattr(model_config, key) for key in _OPTIONS if getattr(model_config, key) is not None}
    options["lambda_layer"] = model_config.lambda_layer
    positional = model_config.layout() if model_config.architecture == GENERIC else ()
    return CONSTRUCTORS[model_config.architecture], positional, options


def build_model(
    model_config: ModelConfig | Mapping[str, Any],
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
      model_config: a ``ModelConfig``, or its mapping (converted once with
        ``ModelConfig.from_dict``).
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

    Raises:
      ModelConfigError: an invalid mapping, naming the key.
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
