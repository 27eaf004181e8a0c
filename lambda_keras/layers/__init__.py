"""Keras layers of lambda-keras."""

from lambda_keras.layers.lambda_layer import LambdaLayer
from lambda_keras.layers.pooling import AveragePooling2D, SymmetricMaxPooling2D

__all__ = ["AveragePooling2D", "LambdaLayer", "SymmetricMaxPooling2D"]
