"""A synthetic detection set made on the fly: coloured shapes on noisy canvases.

Every image is ``[size, size, 3]`` uint8 RGB with one to ``max_objects`` filled shapes,
a square, a disc or a triangle (the classes 0, 1, 2), each of a random colour, side and
position, overlapping no other shape of its image by more than a tenth (IoU). Boxes are
``[x_min, y_min, x_max, y_max]`` in pixels ("xyxy", KerasHub's ``bounding_box_format``),
padded with -1 boxes and -1 labels to ``max_objects`` rows.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("square", "disc", "triangle")
# With `class_colours`, each class is drawn near its own colour (red, green, blue).
CLASS_COLOURS = np.array([[220, 60, 60], [60, 220, 60], [60, 60, 220]], np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of ``boxes`` ``[n, 4]``: ``[n]``."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return intersection / (area + areas - intersection)


def _shape_mask(label: int, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of a shape filling the square at (x0, y0) of ``side``."""
    # Pixel centres, so that a shape is symmetric in its box.
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
    if label == 0:
        return inside
    centre_x = x0 + side / 2
    if label == 1:
        return (xx - centre_x) ** 2 + (yy - y0 - side / 2) ** 2 <= (side / 2) ** 2
    # An isosceles triangle, apex at the top centre, base the box's bottom edge.
    return inside & (np.abs(xx - centre_x) <= (yy - y0) / 2)


def make_shapes(
    num_images: int,
    image_size: int = 64,
    min_side: int = 12,
    max_side: int = 28,
    max_objects: int = 3,
    seed: int = 0,
    class_colours: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draws ``num_images`` canvases with their boxes and classes.

    Returns:
      ``images`` uint8 ``[num_images, image_size, image_size, 3]`` and ``{"boxes":
      float32 [num_images, max_objects, 4], "labels": int32 [num_images, max_objects]}``,
      rows beyond an image's objects -1.

    Raises:
      ValueError: sides that do not fit the canvas.
    """
    if not 1 <= min_side <= max_side <= image_size:
        raise ValueError(f"Need 1 <= min_side <= max_side <= image_size. Received: {min_side}, {max_side}, "
                         f"{image_size}")
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, image_size, image_size, 3), np.uint8)
    boxes = np.full((num_images, max_objects, 4), -1, np.float32)
    labels = np.full((num_images, max_objects), -1, np.int32)
    for index in range(num_images):
        background = rng.uniform(0, 100, 3)
        canvas = background + rng.normal(0, 12, (image_size, image_size, 3))
        placed = 0
        for _ in range(rng.integers(1, max_objects + 1)):
            for _attempt in range(20):
                side = int(rng.integers(min_side, max_side + 1))
                x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, 2))
                box = np.array([x0, y0, x0 + side, y0 + side], np.float32)
                if placed == 0 or _iou(box, boxes[index, :placed]).max() <= 0.1:
                    break
            else:
                continue
            label = int(rng.integers(len(CLASS_NAMES)))
            colour = CLASS_COLOURS[label] + rng.uniform(-40, 40, 3) if class_colours else rng.uniform(120, 255, 3)
            canvas[_shape_mask(label, x0, y0, side, image_size)] = colour
            boxes[index, placed], labels[index, placed] = box, label
            placed += 1
        images[index] = np.clip(canvas, 0, 255).astype(np.uint8)
    return images, {"boxes": boxes, "labels": labels}
