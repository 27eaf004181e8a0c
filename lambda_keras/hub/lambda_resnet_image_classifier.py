"""``LambdaResNetImageClassifier``: a LambdaResNet backbone with KerasHub's classification head."""

from __future__ import annotations

import os

import keras
import keras_hub

from lambda_keras.hub.lambda_resnet_backbone import LambdaResNetBackbone, staged_preset_dir
from lambda_keras.hub.lambda_resnet_image_classifier_preprocessor import LambdaResNetImageClassifierPreprocessor
from lambda_keras.hub.lambda_resnet_image_converter import LambdaResNetImageConverter
from lambda_keras.hub.lambda_resnet_presets import eval_transform, update_metadata


@keras.saving.register_keras_serializable(package="lambda_keras")
class LambdaResNetImageClassifier(keras_hub.models.ImageClassifier):
    """``LambdaResNetBackbone`` + global pooling + dropout + dense, with its preprocessor.

    ``predict`` and ``fit`` take RGB images ``[batch, height, width, 3]`` in [0, 255] of
    any size: the preprocessor (``LambdaResNetImageClassifierPreprocessor``) crops,
    resizes and normalises them as the evaluation pipeline does. Output ``[batch,
    num_classes]``. Arguments as ``keras_hub.models.ImageClassifier``: ``backbone``,
    ``num_classes``, ``preprocessor``, ``pooling``, ``activation``, ``dropout``,
    ``head_dtype``.
    """

    backbone_cls = LambdaResNetBackbone
    preprocessor_cls = LambdaResNetImageClassifierPreprocessor

    def save_to_preset(self, preset_dir: str | os.PathLike, max_shard_size: int | float | None = 10) -> None:
        """Writes the task, backbone and preprocessor configs and weights to ``preset_dir``.

        ``metadata.json`` also holds the evaluation transform of the preprocessor
        (``eval_transform``). The directory appears complete or not at all (see
        ``staged_preset_dir``).
        """
        with staged_preset_dir(preset_dir) as staging:
            super().save_to_preset(staging, max_shard_size=max_shard_size)
            converter = getattr(self.preprocessor, "image_converter", None)
            if isinstance(converter, LambdaResNetImageConverter):
                update_metadata(staging, {"eval_transform": eval_transform(converter)})
