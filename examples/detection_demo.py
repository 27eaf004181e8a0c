"""Trains a KerasHub RetinaNet on a small LambdaResNet or ResNet backbone, on CPU, in minutes.

The data are made on the fly (``lambda_keras.hub.shapes_data``): squares, discs and
triangles of 12-28 pixels, each class near its own colour, on noisy square canvases.
The detector is evaluated on held-out canvases with COCO's mAP (pycocotools)::

    python examples/detection_demo.py --backbone lambda --steps 120 --canvas_size 64 --seed 0

``--backbone lambda`` has lambda layers (7x7 local scope) in the c4 and c5 blocks;
``--backbone conv`` is the same factory's model with bottleneck convolutions only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import keras
import numpy as np

from lambda_keras.hub import LambdaResNetBackbone
from lambda_keras.hub.coco_evaluation import coco_mean_average_precision
from lambda_keras.hub.lambda_resnet_retinanet import lambda_resnet_retinanet, train_retinanet
from lambda_keras.hub.shapes_data import make_shapes

# One bottleneck block per stage at a quarter of the stage widths (P3-P5 of 128, 256 and
# 512 channels); the backbones differ only in the c4 and c5 blocks.
BACKBONE_CONFIGS = {
    "lambda": {"architecture": "LambdaResNet", "blocks_per_stage": [1, 1, 1, 1], "width_multiplier": 0.25,
               "lambda_blocks": [[], [], [1], [1]], "lambda_layer": {"scope_size": 7}},
    "conv": {"architecture": "LambdaResNet", "blocks_per_stage": [1, 1, 1, 1], "width_multiplier": 0.25,
             "lambda_blocks": [[], [], [], []]},
}
# KerasHub's non-maximum suppression needs a static batch size: TEST_IMAGES is a multiple of 32.
TRAIN_IMAGES, TEST_IMAGES = 1024, 256
MIN_SIDE, MAX_SIDE = 12, 28


def run_detection_demo(backbone: str, steps: int, canvas_size: int, seed: int) -> dict[str, float]:
    """Trains a detector on ``backbone`` ("lambda" or "conv") and evaluates it.

    Returns:
      ``{"train_seconds", "mAP", "mAP@0.5"}``, the mAPs on ``TEST_IMAGES`` held-out canvases.
    """
    keras.utils.set_random_seed(seed)
    train_images, train_targets = make_shapes(TRAIN_IMAGES, canvas_size, MIN_SIDE, MAX_SIDE, seed=seed,
                                              class_colours=True)
    test_images, test_targets = make_shapes(TEST_IMAGES, canvas_size, MIN_SIDE, MAX_SIDE, seed=seed + 1,
                                            class_colours=True)
    detector = lambda_resnet_retinanet(
        LambdaResNetBackbone(**BACKBONE_CONFIGS[backbone], image_shape=(canvas_size, canvas_size, 3)),
        num_classes=3, seed=seed,
    )
    start = time.perf_counter()
    train_retinanet(detector, train_images, train_targets, steps=steps, seed=seed)
    train_seconds = time.perf_counter() - start
    predictions = detector.predict(test_images, batch_size=32, verbose=0)
    detections = {key: np.asarray(value) for key, value in predictions.items()}
    result = coco_mean_average_precision(test_targets, detections, (canvas_size, canvas_size))
    return {"train_seconds": train_seconds, **result}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONE_CONFIGS), default="lambda")
    parser.add_argument("--steps", type=int, default=120, help="training steps of 16 images")
    parser.add_argument("--canvas_size", type=int, default=64, help="image side in pixels (a multiple of 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.canvas_size % 32 or args.canvas_size < MAX_SIDE:
        parser.error(f"need --steps >= 1 and --canvas_size a multiple of 32 of at least {MAX_SIDE}. "
                     f"Received: --steps {args.steps} --canvas_size {args.canvas_size}")
    result = run_detection_demo(args.backbone, args.steps, args.canvas_size, args.seed)
    print(f"backbone {args.backbone}: trained {args.steps} steps in {result['train_seconds']:.0f} s; "
          f"held-out mAP {result['mAP']:.3f}, mAP@0.5 {result['mAP@0.5']:.3f}")


if __name__ == "__main__":
    main()
