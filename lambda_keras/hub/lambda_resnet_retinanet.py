"""A KerasHub RetinaNet on a ``LambdaResNetBackbone``: the paper's use as a detection backbone.

``keras_hub.models.RetinaNetObjectDetector`` reads the backbone's ``pyramid_outputs``
from ``min_level`` to ``max_level`` through an FPN (256 channels per level) into a box
and a class head shared by the levels, trains with focal loss on the anchors the label
encoder matches, and decodes with non-maximum suppression. The defaults here suit small
objects on small canvases (docs/design.md, "Detection with KerasHub's RetinaNet").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import keras_hub
import numpy as np
import tensorflow as tf

# Not exported by KerasHub (0.29-0.32); its detector builds one from these same arguments.
from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder
from lambda_keras.hub.lambda_resnet_backbone import LambdaResNetBackbone
from lambda_keras.hub.lambda_resnet_image_converter import EVAL_OFFSET, EVAL_SCALE

BOX_FORMAT = "xyxy"


def lambda_resnet_retinanet(
    backbone: LambdaResNetBackbone,
    num_classes: int,
    *,
    min_level: int = 3,
    max_level: int = 5,
    anchor_size: float = 2.0,
    num_scales: int = 2,
    aspect_ratios: Sequence[float] = (1.0,),
    positive_threshold: float = 0.4,
    negative_threshold: float = 0.3,
    pre_logits_num_conv_layers: int = 1,
    confidence_threshold: float = 0.05,
    max_detections: int = 20,
    prior_probability: float = 0.01,
    seed: int | None = None,
) -> keras_hub.models.RetinaNetObjectDetector:
    """A RetinaNet detector on ``backbone``'s pyramid levels ``min_level``..``max_level``.

    The detector takes RGB images ``[batch, height, width, 3]`` in [0, 255] (its
    preprocessor normalises them as the backbone was trained, without resizing) and
    boxes in pixels, ``[x_min, y_min, x_max, y_max]``. ``predict`` returns ``{"boxes":
    [batch, max_detections, 4], "confidence": [batch, max_detections], "labels": ...,
    "num_detections": [batch]}``.

    Args:
      backbone: its ``image_shape`` is the detector's input shape.
      num_classes: object classes (no background class).
      min_level, max_level: pyramid levels with anchors and heads; level ``l`` has
        stride ``2**l``; levels above P5 are made by the FPN from P5.
      anchor_size, num_scales, aspect_ratios: the anchors at level ``l`` have sides
        ``2**l * anchor_size * 2**(s / num_scales)`` for ``s < num_scales``, at each
        aspect ratio.
      positive_threshold, negative_threshold: an anchor overlapping a box by IoU at
        least the first is trained on it, one under the second is background, the
        others are ignored (0.5 and 0.4 in the paper; lower, so that the smallest
        objects match an anchor).
      pre_logits_num_conv_layers: 3x3 convolutions (256 channels) in each head before
        its output convolution (4 in the RetinaNet paper).
      confidence_threshold: the lowest score kept by the non-maximum suppression (low,
        so that mAP sees the whole precision-recall curve).
      max_detections: boxes kept per image.
      prior_probability: every anchor's foreground probability before training.
      seed: of the heads' initial kernels.
    """
    retinanet_backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=backbone, min_level=min_level, max_level=max_level, use_p5=False,
        image_shape=backbone.image_shape,
    )
    anchor_generator = keras_hub.layers.AnchorGenerator(
        BOX_FORMAT, min_level=min_level, max_level=max_level, num_scales=num_scales,
        aspect_ratios=list(aspect_ratios), anchor_size=anchor_size,
    )
    label_encoder = RetinaNetLabelEncoder(
        anchor_generator, bounding_box_format=BOX_FORMAT, encoding_format="center_xywh",
        positive_threshold=positive_threshold, negative_threshold=negative_threshold,
    )
    preprocessor = keras_hub.models.RetinaNetObjectDetectorPreprocessor(
        image_converter=keras_hub.layers.RetinaNetImageConverter(
            scale=list(EVAL_SCALE), offset=list(EVAL_OFFSET), bounding_box_format=BOX_FORMAT,
        )
    )
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format=BOX_FORMAT, from_logits=True, confidence_threshold=confidence_threshold,
        max_detections=max_detections,
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=retinanet_backbone, num_classes=num_classes, bounding_box_format=BOX_FORMAT,
        anchor_generator=anchor_generator, label_encoder=label_encoder,
        pre_logits_num_conv_layers=pre_logits_num_conv_layers, preprocessor=preprocessor,
        prediction_decoder=decoder, classification_head_prior_probability=prior_probability,
    )
    initialize_heads(detector, prior_probability, seed)
    return detector


def initialize_heads(
    detector: keras_hub.models.RetinaNetObjectDetector, prior_probability: float, seed: int | None = None
) -> None:
    """Initialises the box and class heads as the RetinaNet paper does (Lin et al. 2017, Sec. 4.1).

    Kernels are drawn from N(0, 0.01^2); biases are zero except the class head's output
    bias ``-log((1 - p) / p)``, so that every anchor starts with foreground probability
    ``p`` and decodes to itself. KerasHub's ``RetinaNetObjectDetector`` (0.29-0.32) draws the
    kernels from N(0, 0.05^2) and gives the prior bias to the box head, not the class
    head: every box starts 4.6 anchor sides up and left of its anchor with 1% of its
    size, which the training does not fully undo.
    """
    rng = np.random.default_rng(seed)
    prior_bias = -math.log((1.0 - prior_probability) / prior_probability)
    for head in (detector.box_head, detector.classification_head):
        for conv in [*head.conv_layers, head.prediction_layer]:
            conv.kernel.assign(rng.normal(0.0, 0.01, conv.kernel.shape).astype(np.float32))
            if conv.use_bias:
                is_class_output = head is detector.classification_head and conv is head.prediction_layer
                conv.bias.assign(np.full(conv.bias.shape, prior_bias if is_class_output else 0.0, np.float32))


def train_retinanet(
    detector: keras_hub.models.RetinaNetObjectDetector,
    images: np.ndarray,
    targets: dict[str, np.ndarray],
    *,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    smooth_l1_beta: float = 0.11,
    seed: int = 0,
) -> None:
    """Trains ``detector`` for ``steps`` steps of Adam on ``images`` and their boxes.

    The learning rate warms up linearly over the first tenth of the steps from a tenth
    of ``learning_rate`` and then follows a cosine decay to zero. The box loss is the
    RetinaNet paper's smooth L1 (Huber with ``delta = beta``, divided by beta), the class
    loss KerasHub's focal loss, both summed over the anchors and divided by the positive
    anchors of the batch.

    Args:
      images: uint8 ``[num_images, height, width, 3]``, the detector's input size.
      targets: ``{"boxes": float32 [num_images, max_objects, 4] (xyxy pixels),
        "labels": int32 [num_images, max_objects]}``, padding rows -1.
      steps: optimizer steps; the images are reshuffled every pass.
    """
    warmup_steps = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate / 10, steps - warmup_steps, warmup_target=learning_rate, warmup_steps=warmup_steps
    )
    detector.compile(
        optimizer=keras.optimizers.Adam(schedule),
        box_loss=keras.losses.Huber(delta=smooth_l1_beta, reduction="sum"),
        loss_weights={"bbox_regression": 1.0 / smooth_l1_beta, "cls_logits": 1.0},
    )
    batches = (
        tf.data.Dataset.from_tensor_slices((images, targets))
        .shuffle(len(images), seed=seed).repeat().batch(batch_size, drop_remainder=True)
    )
    detector.fit(batches, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
