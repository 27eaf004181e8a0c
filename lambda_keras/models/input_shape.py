"""Argument checks of the keras.applications constructor contract.

Keras keeps ``obtain_input_shape`` private (``keras.src.applications.imagenet_utils``),
so this is our own paraphrase of it, with the same rules, order and wording, plus
the check that differs for this package: no ImageNet weights exist for the paper's
models.
"""

from __future__ import annotations

import os
import warnings

import keras

# The paper never released checkpoints ([TEX] footnote "Code and model checkpoints
# will be available shortly"; none were published).
IMAGENET_WEIGHTS_MESSAGE = (
    "No ImageNet weights are published for the LambdaNetworks paper's models "
    "(Bello, ICLR 2021): the paper's code and checkpoints were never released, so "
    "`weights='imagenet'` cannot be honoured. Use `weights=None` (random "
    "initialisation) and train the model (e.g. with the package's training recipe), "
    "or pass the path to a `.weights.h5` or `.keras` file that you trained or "
    "converted yourself. (timm's lambda ResNets, LambdaResNet26T, LambdaResNet26RPT256 "
    "and LambdaResNet50TS, take converted ImageNet weights: see their weights='imagenet'.)"
)

WEIGHT_FILE_SUFFIXES = (".weights.h5", ".keras")


def validate_weights(weights) -> None:
    """Raises ``ValueError`` unless ``weights`` is None or an existing weights file.

    Args:
      weights: ``None`` or the path to a ``.weights.h5`` / ``.keras`` file.
    """
    if weights is None:
        return
    if isinstance(weights, str) and weights == "imagenet":
        raise ValueError(f"{IMAGENET_WEIGHTS_MESSAGE} Received: weights='imagenet'")
    if not isinstance(weights, (str, os.PathLike)) or not os.path.exists(weights):
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization) "
            "or the path to the weights file to be loaded (a `.weights.h5` or "
            f"`.keras` file). Received: weights={weights!r}"
        )
    if not os.fspath(weights).endswith(WEIGHT_FILE_SUFFIXES):
        raise ValueError(
            "The weights file must end in `.weights.h5` or `.keras` (what "
            "`model.save_weights` and `model.save` write). "
            f"Received: weights={weights!r}"
        )


def validate_classes(include_top: bool, classes) -> None:
    """With a classifier on top, ``classes`` must be a positive integer."""
    if include_top and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ValueError(
            "If `include_top` is True, `classes` should be a positive integer "
            f"(the size of the classifier). Received classes={classes!r}"
        )


def validate_pooling(pooling) -> None:
    """``pooling`` is None, "avg" or "max" (keras.applications ignores other values
    silently; a typo there gives a 4-D output, so we raise instead)."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            f'`pooling` should be None, "avg" or "max". Received: pooling={pooling!r}'
        )


def obtain_input_shape(
    input_shape: tuple | None,
    default_size: int,
    min_size: int,
    require_flatten: bool,
) -> tuple:
    """Computes and checks the model's input shape, as keras.applications does.

    ``(height, width, channels)``, or ``(channels, height, width)`` when
    ``keras.config.image_data_format()`` is ``"channels_first"``. The rules of
    keras.applications for a model without pretrained weights: a given shape must
    have three entries and a spatial size of at least ``min_size`` (``None``
    allowed); an unusual channel count only warns; without a shape the default is
    ``default_size`` square with 3 channels with a classifier on top and a free
    spatial size without; a classifier needs a static shape.

    Args:
      input_shape: ``None`` or a 3-tuple in the image data format's order.
      default_size: default height and width.
      min_size: smallest accepted height and width.
      require_flatten: whether the model ends in a classifier (``include_top``).

    Returns:
      The input shape, a 3-tuple that may contain ``None`` spatial entries.
    """
    channels_first = keras.config.image_data_format() == "channels_first"

    def in_format(spatial: int | None, channels: int) -> tuple:
        return (channels, spatial, spatial) if channels_first else (spatial, spatial, channels)

    if input_shape:
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError("`input_shape` must be a tuple of three integers.")
        channels = input_shape[0] if channels_first else input_shape[-1]
        height, width = input_shape[1:] if channels_first else input_shape[:2]
        if channels not in {1, 3}:
            warnings.warn(
                "This model usually expects 1 or 3 input channels. However, it was "
                f"passed an input_shape with {channels} input channels.",
                stacklevel=4,
            )
        if (height is not None and height < min_size) or (width is not None and width < min_size):
            raise ValueError(
                f"Input size must be at least {min_size}x{min_size}; Received: "
                f"input_shape={input_shape}"
            )
    elif require_flatten:
        input_shape = in_format(default_size, 3)
    else:
        input_shape = in_format(None, 3)
    if require_flatten and None in input_shape:
        raise ValueError(
            "If `include_top` is True, you should specify a static `input_shape`. "
            f"Received: input_shape={input_shape}"
        )
    return input_shape


def check_application_arguments(
    weights, include_top: bool, classes, input_shape: tuple | None, pooling, default_size: int
) -> tuple:
    """keras.applications' argument checks, in its order: weights, classes, input shape,
    pooling.

    Returns:
      The input shape, as :func:`obtain_input_shape` gives it (at least 32x32).
    """
    validate_weights(weights)
    validate_classes(include_top, classes)
    input_shape = obtain_input_shape(input_shape, default_size=default_size, min_size=32, require_flatten=include_top)
    validate_pooling(pooling)
    return input_shape
