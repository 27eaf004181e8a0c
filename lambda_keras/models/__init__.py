"""keras.applications-style model constructors: LambdaResNets and their baselines.

Every constructor is listed once, in ``variants.VARIANTS`` (the named models, each a
complete config) or ``variants.FACTORIES``; ``__all__`` and ``CONSTRUCTORS`` follow from it.
"""

from lambda_keras.models import constructors
from lambda_keras.models.blocks import StochasticDepth
from lambda_keras.models.builder import build_model, validate_model_config
from lambda_keras.models.complexity import multiply_adds
from lambda_keras.models.features import feature_extractor, pyramid_outputs
from lambda_keras.models.constructors import *  # noqa: F401,F403  (the constructors, by __all__)
from lambda_keras.models.model_config import LambdaLayerConfig, ModelConfig, ModelConfigError

__all__ = [
    *constructors.__all__,
    "LambdaLayerConfig",
    "ModelConfig",
    "ModelConfigError",
    "StochasticDepth",
    "build_model",
    "feature_extractor",
    "multiply_adds",
    "pyramid_outputs",
    "validate_model_config",
]
