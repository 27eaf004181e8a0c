"""lambda-keras: LambdaNetworks (Bello, ICLR 2021) for Keras 3."""

from lambda_keras.layers import LambdaLayer

__version__ = "0.1.0"

__all__ = ["LambdaLayer", "__version__"]
