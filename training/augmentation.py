"""RandAugment and Mixup/CutMix from tf-models-official, wired to `InputConfig`.

Only `official.vision.ops.augment` is used: its ops are plain TensorFlow and run inside
tf.data next to a Keras 3 model. The import is local to these builders so that the rest
of `training` (and the serving export) does not load tf-models-official.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from training.input_config import InputConfig

BatchFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def build_randaugment(config: InputConfig) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """RandAugment(num_layers, magnitude) as an image function, or None when disabled.

    The returned function maps a float32 [height, width, 3] image in [0, 255] to a
    float32 image of the same shape in [0, 255] (tf-models clips and rounds through
    uint8 internally).
    """
    if not config.use_randaugment:
        return None
    from official.vision.ops import augment  # pylint: disable=import-outside-toplevel

    randaugment = augment.RandAugment(
        num_layers=config.randaugment_num_layers,
        magnitude=config.randaugment_magnitude,
    )
    return randaugment.distort


def build_mixup_cutmix(config: InputConfig) -> BatchFn | None:
    """Mixup/CutMix over a batch, or None when both alphas are 0.

    The returned function takes float images [batch, height, width, 3] and int labels
    [batch] and returns the mixed images and soft labels float32 [batch, num_classes]
    (with `mixup_label_smoothing` applied). Images are mixed with the batch reversed,
    so apply it to the per-replica batch.
    """
    if not config.mixup_or_cutmix:
        return None
    from official.vision.ops import augment  # pylint: disable=import-outside-toplevel

    mixer = augment.MixupAndCutmix(
        num_classes=config.num_classes,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        prob=config.mixup_cutmix_prob,
        switch_prob=config.mixup_cutmix_switch_prob,
        label_smoothing=config.mixup_label_smoothing,
    )
    return mixer.distort
