"""Random weights for model tests."""

import numpy as np


def randomize(model, seed: int = 0, scale: float = 0.2) -> None:
    """Gives every weight a random value (normal, standard deviation `scale`; moving
    variances positive), so that zero-initialised BN gammas no longer hide the residual
    branches (and the lambda layers in them)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "seed_generator" in weight.path:
            continue
        value = rng.normal(0.0, scale, weight.shape).astype("float32")
        if "moving_variance" in weight.path:
            value = np.abs(value) + 0.5
        weight.assign(value)
