"""lambda-keras: LambdaNetworks (Bello, ICLR 2021) for Keras 3."""

from lambda_keras import imagenet_utils, models, recipe
from lambda_keras.layers import LambdaLayer
from lambda_keras.models import *  # noqa: F401,F403  (the constructors, by models.__all__)

__version__ = "0.1.0"

__all__ = ["LambdaLayer", "__version__", "imagenet_utils", "recipe", *models.__all__]
