"""LambdaResNets as KerasHub models: backbone, image classifier, preprocessing, presets.

Needs the ``hub`` extra (``pip install "lambda-keras[hub]"``); ``import lambda_keras``
does not import KerasHub, ``import lambda_keras.hub`` does and registers the classes, so
that ``keras_hub.models.Backbone.from_preset(directory)`` and
``keras_hub.models.ImageClassifier.from_preset(directory)`` load a preset saved from them.
The layout follows KerasHub's ``models/<model>/`` package: one class per module.
"""

try:
    import keras_hub
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError('lambda_keras.hub needs KerasHub: pip install "lambda-keras[hub]"') from error

from lambda_keras.hub.lambda_resnet_backbone import LambdaResNetBackbone
from lambda_keras.hub.lambda_resnet_image_classifier import LambdaResNetImageClassifier
from lambda_keras.hub.lambda_resnet_image_classifier_preprocessor import LambdaResNetImageClassifierPreprocessor
from lambda_keras.hub.lambda_resnet_image_converter import LambdaResNetImageConverter
from lambda_keras.hub.lambda_resnet_presets import backbone_presets

keras_hub.src.utils.preset_utils.register_presets(backbone_presets, LambdaResNetBackbone)

__all__ = [
    "LambdaResNetBackbone",
    "LambdaResNetImageClassifier",
    "LambdaResNetImageClassifierPreprocessor",
    "LambdaResNetImageConverter",
    "backbone_presets",
]
