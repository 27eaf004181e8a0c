"""The paper's training recipe as Keras objects: schedule, loss and metric.

- `WarmupCosineDecay`: linear warm-up from 0 to the peak learning rate, then cosine
  decay to 0 (Section 4.1: "linear warm-up from 0 to 0.1 B/256 over 5 epochs, then
  cosine decay").
- `SmoothedCrossEntropy` and `TopKAccuracy`: label-smoothed cross entropy and top-k
  accuracy for integer labels [batch] or soft (Mixup/CutMix) labels [batch, classes].

They live in the library, written with `keras.ops` for every backend, because a
compiled model saves them: a `.keras` checkpoint of the training CLI loads, with
`safe_mode=True`, after `import lambda_keras` alone. Their registered package name is
the one the checkpoints already record.
"""

from __future__ import annotations

import math

import keras
from keras import ops

_PACKAGE = "lambda_keras_training"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then half a cosine to zero.

    lr(t) = peak * t / warmup_steps                                  for t < warmup_steps
    lr(t) = peak * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2
                                                                     afterwards,
    and 0 from total_steps on (a run resumed from a mid-epoch backup takes a few steps
    more than planned; see training/experiment.py). The cosine spans the steps after the
    warm-up, so the curve is continuous at the peak. t is the optimizer's step counter,
    0 for the first update.

    Args:
      peak_learning_rate: the learning rate at the end of the warm-up.
      warmup_steps: steps of linear warm-up (0 for none).
      total_steps: steps of the whole run, warm-up included.
    """

    def __init__(self, peak_learning_rate: float, warmup_steps: int, total_steps: int):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"Need 0 <= warmup_steps < total_steps; got warmup_steps={warmup_steps}, "
                f"total_steps={total_steps}."
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.peak_learning_rate * step / max(self.warmup_steps, 1)
        progress = ops.clip(
            (step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        cosine = 0.5 * self.peak_learning_rate * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self) -> dict:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def _hard_labels(y_true, y_pred):
    """int32 [batch] class ids from [batch] ids or [batch, classes] soft labels."""
    if len(y_true.shape) == len(y_pred.shape):
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SmoothedCrossEntropy(keras.losses.Loss):
    """Cross entropy with label smoothing on hard labels.

    y_true: int [batch] class ids (smoothed: 1 - s + s/K on the class, s/K elsewhere),
      or float [batch, K] soft labels from Mixup/CutMix, used as they are (they carry
      their own smoothing, input.mixup_label_smoothing).
    y_pred: float [batch, K] class probabilities (softmax output); Keras' TF backend
      takes the logits from the softmax op, so the loss is computed from logits.
    Returns the mean loss over the batch (Keras' reduction).
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0,
                 name: str = "smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        if len(y_true.shape) == len(y_pred.shape):
            targets = ops.cast(y_true, y_pred.dtype)
        else:
            smoothing = self.label_smoothing
            one_hot = ops.one_hot(_hard_labels(y_true, y_pred), self.num_classes,
                                  dtype=y_pred.dtype)
            targets = one_hot * (1.0 - smoothing) + smoothing / self.num_classes
        return keras.losses.categorical_crossentropy(targets, y_pred)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, label_smoothing=self.label_smoothing)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TopKAccuracy(keras.metrics.Mean):
    """Fraction of examples whose class is among the k highest predictions.

    update_state(y_true, y_pred): y_true int [batch] or soft [batch, K] (its argmax is
    the class), y_pred [batch, K] scores.
    """

    def __init__(self, k: int = 1, name: str | None = None, dtype=None):
        super().__init__(name=name or f"top{k}", dtype=dtype)
        self.k = int(k)

    def update_state(self, y_true, y_pred, sample_weight=None):
        hits = ops.in_top_k(_hard_labels(y_true, y_pred), ops.cast(y_pred, "float32"), self.k)
        return super().update_state(ops.cast(hits, self.dtype), sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {"k": self.k, "name": self.name, "dtype": self.dtype}
