"""Whether a model's weights are all finite: a diverged model is never served or converted."""

from __future__ import annotations

import keras
import numpy as np


def non_finite_weights(model: keras.Model) -> list[str]:
    """The paths of the model's weights (trainable or not, e.g. batch-norm moving
    statistics) that hold a NaN or an infinity, in the model's order; [] when none do."""
    return [weight.path for weight in model.weights
            if not np.isfinite(keras.ops.convert_to_numpy(weight.value)).all()]
