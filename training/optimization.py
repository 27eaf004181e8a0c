"""Optimization pieces of the paper's recipes (docs/design.md, "Training recipes").

- `build_schedule`: `lambda_keras.recipe.WarmupCosineDecay` (linear warm-up, cosine
  decay) over the run's steps.
- `build_optimizer`: SGD with momentum 0.9 and an exponential moving average of the
  weights (`use_ema`, section 4.1's "weight EMA 0.9999 over trainable parameters").
- `apply_coupled_weight_decay`: L2 weight decay added to the loss, as in the TPU ResNet
  reference (`loss += wd * sum(l2_loss(w))`, gradient `wd * w`), on conv, dense and
  lambda kernels and position embeddings only. Keras' own `weight_decay` is the
  decoupled AdamW-style decay `w -= lr * wd * w`, which is a different recipe.

The loss and metrics are `lambda_keras.recipe`'s, where every object a checkpoint
saves is defined and registered.
"""

from __future__ import annotations

import keras

from lambda_keras.recipe import WarmupCosineDecay
from training.config import ExperimentConfig


def peak_learning_rate(config: ExperimentConfig) -> float:
    """base_learning_rate * global batch / learning_rate_base_batch (0.1 x B/256)."""
    return (
        config.train.base_learning_rate
        * config.input.global_batch_size
        / config.train.learning_rate_base_batch
    )


def build_schedule(config: ExperimentConfig) -> WarmupCosineDecay:
    """The warm-up + cosine schedule over train.epochs x steps_per_epoch steps."""
    steps_per_epoch = config.steps_per_epoch
    return WarmupCosineDecay(
        peak_learning_rate(config),
        warmup_steps=int(round(config.train.warmup_epochs * steps_per_epoch)),
        total_steps=config.train.epochs * steps_per_epoch,
    )


def build_optimizer(config: ExperimentConfig) -> keras.optimizers.SGD:
    """SGD with momentum, the schedule and, when train.ema_decay is set, weight EMA.

    Keras' EMA averages the trainable weights only (BN moving statistics keep their own
    momentum, model.norm_momentum). It starts as a copy of the weights (momentum 0 at
    step 0) and replaces the weights at the end of `fit`.
    """
    train = config.train
    ema = {"use_ema": True, "ema_momentum": train.ema_decay} if train.use_ema else {}
    return keras.optimizers.SGD(
        learning_rate=build_schedule(config),
        momentum=float(train.momentum),
        nesterov=train.nesterov,
        **ema,
    )


def apply_coupled_weight_decay(model: keras.Model, weight_decay: float) -> int:
    """Adds L2 weight decay on the model's kernels to its loss (coupled decay).

    Each trainable weight with two or more dimensions (conv, dense and lambda
    kernels, relative position embeddings) gets the regularizer
    `weight_decay / 2 * sum(w ** 2)`, whose gradient is `weight_decay * w`: the TPU
    ResNet reference's `weight_decay * tf.nn.l2_loss(w)`. Batch-norm scales and
    offsets and biases (one dimension) are not decayed. The penalty is part of the
    reported training loss. The regularizers sit on the variables, not in the layer
    configs, so saved models do not carry them.

    Returns:
      The number of decayed weights.
    """
    if weight_decay <= 0:
        return 0
    regularizer = keras.regularizers.L2(weight_decay / 2.0)
    decayed = [w for w in model.trainable_weights if len(w.shape) >= 2]
    for weight in decayed:
        weight.regularizer = regularizer
    return len(decayed)
