"""The exported SavedModel's serving speed, in-process, and a load test.

1. Latency and images/s of `serving_default` (JPEG bytes in, decoding and eval
   preprocessing in the graph) loaded with `tf.saved_model.load`, at batch 1, 8 and
   32, next to `model.predict` and `model.predict_on_batch` of the Keras model on the
   same images already preprocessed. `predict_on_batch` is the model's compute alone
   (`predict` adds a data adapter and an epoch iterator per call), so the difference
   to it is what decoding + preprocessing in the graph cost.
   Each figure is the median of `--repeats` timed calls after 2 warm-up calls.
2. Load: `--threads` threads call `serving_default` for `--seconds` with a mix of
   valid images (batches of 1-4) and invalid ones (30% of requests carry garbage or a
   truncated file). Every valid answer is checked against the single-image answer
   (atol 1e-4: oneDNN picks its convolution algorithm by batch size), every invalid
   request must be refused with "could not be decoded"; resident memory is sampled
   after a warm-up tenth of the run and at the end (`export.load_test`, which the
   serving tests run for a few seconds).

The model is untrained (speed does not depend on the weights); the JPEGs are
(size + 32)^2 pixels, as ImageNet validation images roughly are after a short-side
resize. Writes benchmarks/results/serving_speed.csv and prints the table of docs/benchmarks.md.

    python benchmarks/serving_speed.py                        # LambdaResNet50 at 224, 60 s, 8 threads
    python benchmarks/serving_speed.py --model tiny --seconds 5   # the quick check
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import psutil
import tensorflow as tf

from timing import median_seconds  # benchmarks/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # export/ from a checkout
from export import load_test, saved_model  # noqa: E402
from lambda_keras.data import preprocessing  # noqa: E402
from lambda_keras.models import LambdaResNet, LambdaResNet50  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def build(name: str) -> tuple[keras.Model, int]:
    if name == "tiny":
        return LambdaResNet((1, 1, 1, 1), ((), (), (1,), (1,)), input_shape=(32, 32, 3),
                            classes=10), 32
    return LambdaResNet50(input_shape=(224, 224, 3)), 224


def sample_jpegs(count: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (1, 8, 8, 3)).astype(np.float32)
        image = tf.cast(tf.image.resize(coarse, [size, size]), tf.uint8)[0]
        jpegs.append(tf.io.encode_jpeg(image, quality=90).numpy())
    return jpegs


def speed_rows(model, serve, jpegs, image_size, repeats) -> list[dict]:
    rows = []
    for batch in (1, 8, 32):
        encoded = tf.constant(jpegs[:batch])
        pixels = tf.stack([preprocessing.preprocess_for_eval(j, image_size) for j in jpegs[:batch]])
        for path, function in (
            ("serving_default (JPEG bytes)", lambda: serve(image_bytes=encoded)),
            ("model.predict (preprocessed)", lambda: model.predict(pixels, batch_size=batch, verbose=0)),
            ("model.predict_on_batch (preprocessed)", lambda: model.predict_on_batch(pixels)),
        ):
            seconds = median_seconds(function, repeats)
            rows.append({"path": path, "batch": batch, "latency_ms": round(seconds * 1e3, 2),
                         "images_per_s": round(batch / seconds, 1)})
            print(rows[-1], flush=True)
    return rows


def load_row(serve, jpegs, threads: int, seconds: float) -> dict:
    invalid = [b"", b"not an image", jpegs[0][: len(jpegs[0]) // 2]]
    report = load_test.run_load_test(serve, jpegs, invalid, threads, seconds,
                                     warmup_seconds=seconds / 10)
    return {
        "threads": threads, "seconds": round(report.seconds, 1),
        "valid_answered": report.valid_answered,
        "invalid_refused": report.invalid_refused,
        "wrong_or_accepted": len(report.failures),
        "requests_per_s": round(report.requests_per_s, 1),
        "rss_after_warmup_mib": round(report.rss_after_warmup_bytes / 2**20, 1),
        "rss_end_mib": round(report.rss_end_bytes / 2**20, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("lambda_resnet50", "tiny"), default="lambda_resnet50")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--csv", default=str(RESULTS / "serving_speed.csv"))
    args = parser.parse_args()

    model, image_size = build(args.model)
    jpegs = sample_jpegs(32, image_size + 32)
    with tempfile.TemporaryDirectory() as base:
        path = saved_model.export_model(model, Path(base) / "bench", warmup=False)
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        rows = speed_rows(model, serve, jpegs, image_size, args.repeats)
        load = load_row(serve, jpegs, args.threads, args.seconds)
    print(load)

    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["model", "path", "batch", "latency_ms", "images_per_s"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"model": args.model, **row})
    print(f"\n{args.model}, {image_size}x{image_size}, {psutil.cpu_count()} CPUs\n")
    print("| path | batch | latency (ms) | images/s |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['path']} | {row['batch']} | {row['latency_ms']} | {row['images_per_s']} |")
    print(f"\nLoad: {load['threads']} threads, {load['seconds']} s: {load['valid_answered']} valid "
          f"answered, {load['invalid_refused']} invalid refused, {load['wrong_or_accepted']} wrong; "
          f"RSS {load['rss_after_warmup_mib']} -> {load['rss_end_mib']} MiB")
    return 0 if load["wrong_or_accepted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
