"""``LambdaResNetImageConverter``: the evaluation preprocessing as a KerasHub image converter.

The same numbers as ``lambda_keras.data.preprocessing.preprocess_decoded_for_eval``, the
transform the training pipeline validates with and the SavedModel export serves: the
centred square crop of side ``image_size / (image_size + crop_padding)`` of the shorter
side, a bilinear resize (half-pixel centres, no antialiasing) to ``image_size``, then
``image * (1 / std) + (-mean / std)`` with the ImageNet RGB mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import keras_hub
import numpy as np
from keras import ops
from keras_hub.src.utils.tensor_utils import in_tf_function

from lambda_keras.data import preprocessing
from lambda_keras.hub.lambda_resnet_backbone import LambdaResNetBackbone

# The normalisation of `preprocessing.normalize_image`, as float32 values (exact in JSON).
EVAL_SCALE = tuple(float(s) for s in 1.0 / np.array(preprocessing.STDDEV_RGB, np.float32))
EVAL_OFFSET = tuple(
    float(o) for o in -np.array(preprocessing.MEAN_RGB, np.float32) * np.array(EVAL_SCALE, np.float32)
)


def center_crop_size(height: int, width: int, image_size: int, crop_padding: int) -> tuple[int, int, int]:
    """``(offset_y, offset_x, side)`` of the evaluation crop, computed as ``center_crop_window``.

    The crop fraction multiplies the shorter side in float32 and truncates, as the
    TensorFlow function does, so both give the same window for every image size.
    """
    fraction = np.float32(image_size / (image_size + crop_padding))
    side = max(int(fraction * np.float32(min(height, width))), 1)
    return (height - side + 1) // 2, (width - side + 1) // 2, side


@keras.saving.register_keras_serializable(package="lambda_keras")
class LambdaResNetImageConverter(keras_hub.layers.ImageConverter):
    """RGB images in [0, 255] -> the normalised, centre-cropped input of a LambdaResNet.

    Takes ``[batch, height, width, 3]`` or ``[height, width, 3]`` (any size, uint8 or
    float), or a list of images of different sizes, and returns float32 ``[batch,
    image_size, image_size, 3]``, eagerly or inside ``tf.data`` under any Keras backend.

    Args:
      image_size: ``(side, side)``, the square model input; None skips the crop and the
        resize (normalisation only).
      crop_padding: the evaluation crop padding (32 in the ImageNet recipe: a 0.875
        crop at 224); 0 crops the largest centred square.
      scale, offset: per channel; default the ImageNet normalisation of
        ``lambda_keras.data.preprocessing.normalize_image``.
      **kwargs: the other ``keras_hub.layers.ImageConverter`` arguments.

    Raises:
      ValueError: a non-square ``image_size`` or a negative ``crop_padding``.
    """

    backbone_cls = LambdaResNetBackbone

    def __init__(
        self,
        image_size: Sequence[int] | None = (224, 224),
        crop_padding: int = 32,
        scale: Sequence[float] | float | None = EVAL_SCALE,
        offset: Sequence[float] | float | None = EVAL_OFFSET,
        **kwargs: Any,
    ):
        if image_size is not None and image_size[0] != image_size[1]:
            raise ValueError(f"`image_size` must be square (the evaluation crop is). Received: {tuple(image_size)}")
        if crop_padding < 0:
            raise ValueError(f"`crop_padding` must be >= 0. Received: crop_padding={crop_padding}")
        # The crop below makes the image square: the resize must not crop again.
        kwargs["crop_to_aspect_ratio"] = False
        kwargs.setdefault("interpolation", "bilinear")
        super().__init__(image_size=image_size, scale=scale, offset=offset, **kwargs)
        self.crop_padding = int(crop_padding)

    def call(self, inputs):
        if isinstance(inputs, dict):
            raise ValueError("LambdaResNetImageConverter takes images only, not bounding boxes.")
        images = inputs
        if isinstance(images, (list, tuple)):
            try:
                images = np.asarray(images)
            except ValueError:
                # Images of different sizes: each is cropped and resized, then stacked.
                if self.image_size is None:
                    raise ValueError("Images of different sizes need an `image_size` to be batched.") from None
                return ops.concatenate([self.call(np.asarray(image)[None]) for image in images], axis=0)
        if self.image_size is not None:
            images = self._center_crop(images)
        # Float before resizing: Keras' resize rounds integer images back to integers.
        # Inside tf.data (or any tf.function) the images are TensorFlow tensors, whatever
        # the Keras backend: TensorFlow casts them there, as KerasHub's own converter does.
        if in_tf_function():
            import tensorflow as tf

            images = tf.cast(images, self.compute_dtype)
        else:
            images = ops.cast(images, self.compute_dtype)
        return super().call(images)

    def _center_crop(self, images):
        """The evaluation crop window of ``images`` (a batch shares height and width)."""
        channels_first = self.data_format == "channels_first"
        spatial = (-2, -1) if channels_first else (-3, -2)
        shape = images.shape
        height, width = shape[spatial[0]], shape[spatial[1]]
        if height is None or width is None:
            # Only a tf.data graph has unknown image sizes: TensorFlow's own window.
            import tensorflow as tf

            dynamic = tf.shape(images)
            window = preprocessing.center_crop_window(
                tf.stack([dynamic[spatial[0]], dynamic[spatial[1]], 3]), self.image_size[0], self.crop_padding
            )
            offset_y, offset_x, side = window[0], window[1], window[2]
        else:
            offset_y, offset_x, side = center_crop_size(height, width, self.image_size[0], self.crop_padding)
        if channels_first:
            return images[..., offset_y : offset_y + side, offset_x : offset_x + side]
        return images[..., offset_y : offset_y + side, offset_x : offset_x + side, :]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["crop_padding"] = self.crop_padding
        return config
