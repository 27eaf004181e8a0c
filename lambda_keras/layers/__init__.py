"""Keras layers of lambda-keras."""

from lambda_keras.layers.lambda_layer import LambdaLayer

__all__ = ["LambdaLayer"]
