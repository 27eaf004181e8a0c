"""``LambdaResNetImageClassifierPreprocessor``: a KerasHub classifier's image preprocessing."""

import keras
import keras_hub

from lambda_keras.hub.lambda_resnet_backbone import LambdaResNetBackbone
from lambda_keras.hub.lambda_resnet_image_converter import LambdaResNetImageConverter


@keras.saving.register_keras_serializable(package="lambda_keras")
class LambdaResNetImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """Runs a ``LambdaResNetImageConverter`` on the images; labels pass through.

    ``preprocessor(images)``: RGB ``[batch, height, width, 3]`` in [0, 255] -> float32
    ``[batch, size, size, 3]``; ``preprocessor(images, labels)`` -> ``(inputs, labels)``.
    """

    backbone_cls = LambdaResNetBackbone
    image_converter_cls = LambdaResNetImageConverter
