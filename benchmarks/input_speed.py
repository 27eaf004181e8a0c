"""Input pipeline speed on this CPU: images/s at 224x224 for our train and eval pipelines.

Compared, in one run and on the same TFRecords:
  decode_only        parse + `tf.io.decode_jpeg` of the whole image (the bound);
  decode_crop_resize parse + Inception crop decoded + bilinear resize to 224, nothing
                     else: the work any training pipeline must do;
  ours_train         `build_dataset(..., "train")`: Inception crop, flip, resize,
                     normalise, shuffle, batch (no RandAugment);
  ours_train_randaug the same with RandAugment(2 layers, magnitude 10);
  ours_eval          `build_dataset(..., "validation")`: centre crop, resize, normalise;
  tfm_train / tfm_train_randaug / tfm_eval
                     tf-models-official's classification_input Decoder + Parser with
                     the same augmentations (hflip; RandAugment(2, 10) with the same
                     translate_const), read with the same interleave / map / batch.

The records are generated from the two photos bundled with scikit-learn (china.jpg,
flower.jpg): random crops resized to ImageNet-like sizes (about 400x350), flipped,
jittered and JPEG-encoded at quality 90, in 8 shards. Every variant reads them in a
loop. The variants are measured round-robin, `--repeats` rounds; in each, a fresh
iterator per variant reads `--images` warm-up images and then `--images` timed ones.
Reported: the median (min-max) over the rounds. Output dtype float32. TF_ENABLE_ONEDNN_OPTS
is left as found unless `--onednn` sets it; the CSV records the setting and whether
TensorFlow reports oneDNN as enabled.

    python benchmarks/input_speed.py [--images 256] [--repeats 3] [--onednn 0|1]

Writes benchmarks/results/input_speed.csv and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SIZE = 224
BATCH = 64
NUM_SHARDS = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--records", type=int, default=256, help="distinct JPEGs written")
    parser.add_argument("--onednn", choices=["0", "1"], default=None,
                        help="set TF_ENABLE_ONEDNN_OPTS before importing TensorFlow")
    parser.add_argument("--output", type=Path, default=RESULTS / "input_speed.csv")
    return parser.parse_args()


def write_records(directory: str, count: int, tf) -> None:
    """`count` ImageNet-sized JPEGs made from scikit-learn's sample photos, 8 shards."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from lambda_keras.data.records import image_example, shard_name

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    writers = [
        tf.io.TFRecordWriter(os.path.join(directory, shard_name("train", i, NUM_SHARDS)))
        for i in range(NUM_SHARDS)
    ]
    for index in range(count):
        photo = photos[index % len(photos)]
        crop_h, crop_w = rng.integers(200, 427), rng.integers(250, 640)
        top, left = rng.integers(0, 427 - crop_h + 1), rng.integers(0, 640 - crop_w + 1)
        height = int(np.clip(rng.normal(350, 60), 180, 530))
        width = int(np.clip(rng.normal(400, 70), 200, 600))
        image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
        pixels = np.asarray(image.resize((width, height), Image.BICUBIC), np.float32)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        pixels = pixels * rng.uniform(0.8, 1.2) + rng.uniform(-6, 6, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            buffer, format="JPEG", quality=90
        )
        example = image_example(
            buffer.getvalue(), int(rng.integers(1, 1001)), "synset", height, width, "x.jpg"
        )
        writers[index % NUM_SHARDS].write(example.SerializeToString())
    for writer in writers:
        writer.close()


def reference_style_dataset(files, map_fn, tf):
    """The read structure of the anchors' measurement, for the non-pipeline variants."""
    return (
        tf.data.Dataset.from_tensor_slices(files)
        .repeat()
        .interleave(tf.data.TFRecordDataset, cycle_length=NUM_SHARDS, block_length=1,
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .map(map_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .batch(BATCH, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def build_variants(directory: str, tf):
    from official.vision.configs import common
    from official.vision.dataloaders import classification_input

    from lambda_keras.data import preprocessing, records
    from training.input_config import InputConfig
    from training.input_pipeline import build_dataset

    files = sorted(tf.io.gfile.glob(os.path.join(directory, "train-*")))

    def decode_only(serialized):
        image = tf.io.decode_jpeg(records.parse_example(serialized)[0], channels=3)
        # Shape and first pixel keep the output data-dependent and batchable.
        return tf.concat([tf.shape(image), tf.cast(image[0, 0], tf.int32)], 0)

    def decode_crop_resize(serialized):
        image_bytes = records.parse_example(serialized)[0]
        window = preprocessing.inception_crop_window(
            tf.image.extract_jpeg_shape(image_bytes), (0.08, 1.0), (3 / 4, 4 / 3), 10,
            IMAGE_SIZE, 32,
        )
        image = preprocessing.decode_and_crop(image_bytes, window, preprocessing.TRAIN_DCT_METHOD)
        return preprocessing.resize(image, IMAGE_SIZE)

    config = InputConfig(
        data_dir=directory, eval_file_pattern="train-*", image_size=IMAGE_SIZE,
        global_batch_size=BATCH, shuffle_buffer_size=4 * BATCH,
    )
    randaugment = common.Augmentation(
        type="randaug",
        randaug=common.RandAugment(num_layers=2, magnitude=10, translate_const=100),
    )
    decoder = classification_input.Decoder()

    def tfm(is_training: bool, aug_type=None):
        parser = classification_input.Parser(
            output_size=[IMAGE_SIZE, IMAGE_SIZE], num_classes=1001,
            aug_rand_hflip=True, aug_type=aug_type,
        )
        parse = parser.parse_fn(is_training)
        return reference_style_dataset(
            files, lambda serialized: parse(decoder.decode(serialized)), tf
        )

    return [
        ("decode_only", "parse + tf.io.decode_jpeg (bound)",
         lambda: reference_style_dataset(files, decode_only, tf)),
        ("decode_crop_resize", "parse + Inception crop decode + resize only (floor of train)",
         lambda: reference_style_dataset(files, decode_crop_resize, tf)),
        ("ours_train", "build_dataset train, no RandAugment",
         lambda: build_dataset(config, "train")),
        ("tfm_train", "tf-models Decoder+Parser train, hflip",
         lambda: tfm(True)),
        ("ours_train_randaug", "build_dataset train + RandAugment(2, 10)",
         lambda: build_dataset(config.replace(use_randaugment=True), "train")),
        ("tfm_train_randaug", "tf-models Parser train + RandAugment(2, 10)",
         lambda: tfm(True, randaugment)),
        ("ours_eval", "build_dataset validation (centre crop 224/256)",
         lambda: build_dataset(config, "validation").repeat()),
        ("tfm_eval", "tf-models Parser eval (centre crop 0.875)",
         lambda: tfm(False)),
    ]


def time_variants(variants, images: int, repeats: int) -> dict[str, list[float]]:
    """images/s of each variant, measured round-robin so that changes in the machine's
    load (it is shared) affect every variant alike.

    Each measurement uses a fresh iterator: `images` warm-up images, then `images`
    timed ones; deleting the iterator stops its background threads before the next
    variant runs.
    """
    datasets = {name: make() for name, _, make in variants}
    rates = {name: [] for name in datasets}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            iterator = iter(dataset)
            consume(iterator, images)
            start = time.perf_counter()
            seen = consume(iterator, images)
            rates[name].append(seen / (time.perf_counter() - start))
            del iterator
    return rates


def consume(iterator, images: int) -> int:
    seen = 0
    while seen < images:
        # Evaluation repeats a finite dataset, whose last batch is partial.
        seen += len(tf_first(next(iterator)))
    return seen


def tf_first(batch):
    """The first tensor of a batch (images, or the decode-only summary)."""
    return batch[0] if isinstance(batch, tuple) else batch


def main() -> int:
    args = parse_args()
    if args.onednn is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = args.onednn
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Run as a script from a checkout: `training` is importable without installing.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tensorflow as tf
    from tensorflow.python.framework import test_util

    onednn_setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    onednn_enabled = test_util.IsMklEnabled()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        write_records(directory, args.records, tf)
        variants = build_variants(directory, tf)
        rates = time_variants(variants, args.images, args.repeats)
    bound = statistics.median(rates["decode_only"])
    for name, description, _ in variants:
        median = statistics.median(rates[name])
        rows.append({
            "variant": name,
            "description": description,
            "images_per_s_median": round(median, 1),
            "images_per_s_min": round(min(rates[name]), 1),
            "images_per_s_max": round(max(rates[name]), 1),
            "fraction_of_decode_only": round(median / bound, 3),
            "images_per_run": args.images,
            "timed_runs": args.repeats,
            "image_size": IMAGE_SIZE,
            "batch": BATCH,
            "TF_ENABLE_ONEDNN_OPTS": onednn_setting,
            "onednn_enabled": onednn_enabled,
            "tensorflow": tf.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
        })
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| variant | img/s median (min-max) | of decode-only |\n|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['images_per_s_median']:.0f} "
              f"({row['images_per_s_min']:.0f}-{row['images_per_s_max']:.0f}) | "
              f"{100 * row['fraction_of_decode_only']:.0f} % |")
    print(f"\n224x224, batch {BATCH}, float32, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"TF_ENABLE_ONEDNN_OPTS={onednn_setting} (oneDNN enabled: {onednn_enabled})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
