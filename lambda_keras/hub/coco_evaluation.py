"""COCO-style mean average precision of a detector's boxes, computed by pycocotools."""

from __future__ import annotations

import contextlib
import io

import numpy as np


def coco_mean_average_precision(
    ground_truth: dict[str, np.ndarray], detections: dict[str, np.ndarray], image_size: tuple[int, int]
) -> dict[str, float]:
    """mAP over IoU 0.5:0.95 and mAP at IoU 0.5, as COCO's ``COCOeval`` computes them.

    Args:
      ground_truth: ``{"boxes": [n, m, 4], "labels": [n, m]}``, xyxy pixels, rows with a
        label of -1 are padding.
      detections: a KerasHub detector's ``predict`` output: ``{"boxes": [n, k, 4],
        "confidence": [n, k], "labels": [n, k], "num_detections": [n]}``, xyxy pixels.
      image_size: ``(height, width)`` of the images.

    Returns:
      ``{"mAP": ..., "mAP@0.5": ...}``, in [0, 1].
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box: np.ndarray) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    height, width = image_size
    images, annotations, results = [], [], []
    classes = set()
    for image_id, (boxes, labels) in enumerate(zip(ground_truth["boxes"], ground_truth["labels"])):
        images.append({"id": image_id, "height": height, "width": width})
        for box, label in zip(boxes, labels):
            if label < 0:
                continue
            classes.add(int(label))
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": xywh(box), "area": area, "iscrowd": 0})
        count = int(detections["num_detections"][image_id])
        for box, score, label in zip(detections["boxes"][image_id][:count], detections["confidence"][image_id][:count],
                                     detections["labels"][image_id][:count]):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": xywh(box), "score": float(score)})
    if not results:
        return {"mAP": 0.0, "mAP@0.5": 0.0}
    dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in sorted(classes)]}
    # pycocotools prints its progress and table; the numbers are returned instead.
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"mAP": float(evaluation.stats[0]), "mAP@0.5": float(evaluation.stats[1])}
