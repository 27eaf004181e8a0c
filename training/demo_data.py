"""The demo data set: scikit-learn's handwritten digits as ImageNet-layout TFRecords.

Usage:
  python -m training.demo_data --output DIR [--image_size 32] [--train_shards 8]
      [--validation_shards 2] [--first_label 1]

The 1797 digits bundled with scikit-learn (8x8 grayscale, 17 levels, 10 classes; real
scans, no download) are upscaled with bicubic interpolation to `image_size` (32 by
default: 4x, large enough for crops and a few stride-2 stages, small enough to train on
a CPU), converted to RGB and written as JPEG (quality 95) tf.Examples with the
`imagenet_to_gcs` feature keys and shard names (`lambda_keras.data.records`), labels
`first_label + digit` (1..10 by default, like ImageNet's 1..1000). So the demo goes
through exactly the ImageNet path: `build_dataset(demo_input_config(DIR), "train")`.

A fixed permutation (seed 0) puts 1500 digits in train-* and 297 in validation-*;
`samples/digit_<d>.jpg` holds one validation image per digit, to classify with an export;
`manifest.json`, written last, lists the shards (`lambda_keras.data.manifest`).
Rewriting into the same folder replaces the shards; other shard counts are refused.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits

from lambda_keras import cli
from lambda_keras.data import manifest
from lambda_keras.atomic_files import remove_temporary_files
from lambda_keras.data.records import (
    ShardSetError,
    image_example,
    shard_name,
    write_records_atomically,
)
from training import shard_set
from training.folder_lock import held_exclusively
from training.input_config import InputConfig

NUM_CLASSES = 10
DEFAULT_IMAGE_SIZE = 32
VALIDATION_SIZE = 297
NUM_DIGITS = 1797
# Below 8 pixels the digits lose their shape; above 512 the demo is only slower.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512
MAX_FIRST_LABEL = 2**31 - NUM_CLASSES
SAMPLES_DIR = "samples"
# sklearn's digits are 4-bit: pixel values 0..16.
_DIGITS_MAX_VALUE = 16.0


def _check_arguments(output_dir: str, image_size: int, shards: dict[str, int], first_label: int) -> None:
    """Refuses what would fail or write empty shards, before anything is written."""
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ShardSetError(f"--image_size {image_size}: must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] "
                            "(the 8x8 digits are upscaled to it).")
    sizes = {"train": NUM_DIGITS - VALIDATION_SIZE, "validation": VALIDATION_SIZE}
    for split, num_shards in shards.items():
        if not 1 <= num_shards <= sizes[split]:
            raise ShardSetError(f"--{split}_shards {num_shards}: must be in [1, {sizes[split]}], the {split} "
                                "images, so that no shard is empty.")
    if not 0 <= first_label <= MAX_FIRST_LABEL:
        raise ShardSetError(f"--first_label {first_label}: must be in [0, {MAX_FIRST_LABEL}] (labels are int32).")
    if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
        raise ShardSetError(f"--output {output_dir} is a file, not a folder.")


def ensure_demo_data(data_dir: str, image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, int] | None:
    """Writes the demo data into `data_dir` unless a finished write is there (its
    manifest; a half-written folder is redone), holding the folder's lock meanwhile.

    Returns:
      `write_demo_data`'s counts, or None when the data were already there.
    """
    if manifest.read_manifest(data_dir) is not None:
        return None
    with held_exclusively(data_dir, "demo data writer"):
        return write_demo_data(data_dir, image_size=image_size)


def digit_images(image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The digits as RGB images.

    Returns:
      images: uint8 [1797, image_size, image_size, 3], white digits on black.
      digits: int64 [1797], the digit (0..9) of each image.
    """
    digits = load_digits()
    images = []
    for pixels in digits.images:
        gray = Image.fromarray(
            np.round(pixels * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)
        )
        upscaled = gray.resize((image_size, image_size), Image.BICUBIC)
        images.append(np.asarray(upscaled.convert("RGB")))
    return np.stack(images), digits.target.astype(np.int64)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 [height, width, 3] image, encoded with PIL."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_demo_data(
    output_dir: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    train_shards: int = 8,
    validation_shards: int = 2,
    first_label: int = 1,
    seed: int = 0,
) -> dict[str, int]:
    """Writes the digits as train-* and validation-* TFRecord shards, then the manifest.

    Returns:
      Number of examples written per split, {"train": 1500, "validation": 297}.

    Raises:
      ShardSetError (a ValueError): an argument out of range (image_size outside
        [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE], a shard count below 1 or above the split's
        images, a negative first label), output_dir is a file, or it holds shards of
        other counts.
    """
    shards = {"train": train_shards, "validation": validation_shards}
    _check_arguments(output_dir, image_size, shards, first_label)
    for split, num_shards in shards.items():
        shard_set.check_one_shard_set_to_write(output_dir, split, num_shards)
    images, digits = digit_images(image_size)
    order = np.random.default_rng(seed).permutation(len(digits))
    splits = {
        "train": order[:-VALIDATION_SIZE],
        "validation": order[-VALIDATION_SIZE:],
    }
    tf.io.gfile.makedirs(output_dir)
    remove_temporary_files(output_dir)
    manifest.remove_manifest(output_dir)
    written = {}
    paths = {split: [] for split in splits}
    for split, indices in splits.items():
        written[split] = 0
        for shard, shard_indices in enumerate(np.array_split(indices, shards[split])):
            records = (
                image_example(
                    encode_jpeg(images[i]), int(digits[i]) + first_label,
                    f"digit_{digits[i]}", image_size, image_size, f"digit_{i:04d}.jpg",
                ).SerializeToString()
                for i in shard_indices
            )
            path = os.path.join(output_dir, shard_name(split, shard, shards[split]))
            written[split] += write_records_atomically(path, records)
            paths[split].append(path)
    write_samples(os.path.join(output_dir, SAMPLES_DIR), images, digits, splits["validation"])
    manifest.write_manifest(output_dir, manifest.Manifest(
        {split: tuple(manifest.describe_shards(split_paths)) for split, split_paths in paths.items()},
        classes=tuple(f"digit_{digit}" for digit in range(NUM_CLASSES)), first_label=first_label,
    ))
    return written


def write_samples(samples_dir: str, images: np.ndarray, digits: np.ndarray, indices: np.ndarray) -> None:
    """One validation JPEG per digit, ``samples/digit_<d>.jpg``, to classify with an export."""
    tf.io.gfile.makedirs(samples_dir)
    for digit in range(NUM_CLASSES):
        first = next(i for i in indices if digits[i] == digit)
        with tf.io.gfile.GFile(os.path.join(samples_dir, f"digit_{digit}.jpg"), "wb") as handle:
            handle.write(encode_jpeg(images[first]))


def demo_input_config(data_dir: str, **overrides: Any) -> InputConfig:
    """An InputConfig suited to the demo digits at their default size of 32 pixels.

    Crop padding 4 keeps the ImageNet crop ratio (32/36 = 0.89, ImageNet 0.875) and
    the training crops keep at least a third of the digit; `overrides` replace fields.
    """
    values = dict(
        source="tfrecord",
        data_dir=data_dir,
        num_classes=NUM_CLASSES,
        label_offset=-1,
        image_size=DEFAULT_IMAGE_SIZE,
        eval_crop_padding=4,
        crop_area_range=(0.35, 1.0),
        # A flipped digit is another glyph.
        random_flip=False,
        global_batch_size=64,
        shuffle_buffer_size=1500,
    )
    values.update(overrides)
    return InputConfig.from_dict(values)


@cli.entry_point("python -m training.demo_data")
def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m training.demo_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="Output folder (local or gs://).")
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--train_shards", type=int, default=8)
    parser.add_argument("--validation_shards", type=int, default=2)
    parser.add_argument("--first_label", type=int, default=1,
                        help="Label of digit 0 (1 like imagenet_to_gcs, 0 like TFDS).")
    args = parser.parse_args(argv)
    written = write_demo_data(
        args.output, args.image_size, args.train_shards, args.validation_shards,
        args.first_label,
    )
    print(f"Wrote {written['train']} train and {written['validation']} validation "
          f"digits ({args.image_size}x{args.image_size} RGB JPEG) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
