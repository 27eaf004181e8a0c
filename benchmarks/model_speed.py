"""Whole models on this CPU: parameters, FLOPs and images/s, next to the paper's figures.

Models (all at ``--image-size``, 224 by default, 1000 classes): LambdaResNet50,
ResNetRS50 with SE, keras.applications.ResNet50, the eight Table 13 hybrids of
the vanilla ResNet-50 (``HybridResNet50(placement=...)``), LambdaResNet101 and
ResNetRS101 with SE (Table 14). For each: trainable parameters, multiply-adds
of one image (``lambda_keras.models.multiply_adds``: the analytic count of the
convolutions, dense and lambda layers, the convention in which ResNet-50 has
"4.1 GFLOPs"; TensorFlow's profiler counts ``Einsum`` as zero), inference images/s
(``tf.function``, inference mode) and training images/s (one
SGD step of a compiled ``train_on_batch``), each the median of ``--repeats``
timed calls after 2 warm-up calls.

The paper's throughputs are inference on 8 TPUv3 cores in fp32 (Tables 13, 14);
only ratios compare. Its floors: the C->C->L->L hybrid at >= 0.69x the
all-conv throughput (4980 / 7240 ex/s) and LambdaResNet-101 at >= 1.0x ResNet-101
with SE (4040 / 4000 ex/s). We record what we measure, whatever it is.

Writes ``benchmarks/results/model_speed.csv`` and ``model_speed.png`` and prints
the markdown table of docs/benchmarks.md. Every row records the CPU, AVX-512, oneDNN and backend.

``--backends`` instead times LambdaResNet50 (``--image-size``, e.g. 64) under each Keras
backend on this CPU: TensorFlow with oneDNN on and off, JAX and PyTorch, each in its
own process, through the backend-neutral ``predict_on_batch`` and ``train_on_batch``
(compiled as Keras compiles by default: XLA under JAX, ``tf.function`` under
TensorFlow, eager under PyTorch), in ``--rounds`` alternating rounds so that a slow spell
of the machine meets every backend. Writes ``model_speed_backends.csv``.

    python benchmarks/model_speed.py                # the full run (long on 2 cores)
    python benchmarks/model_speed.py --image-size 64 --repeats 1 --models CCCC CCLL
    python benchmarks/model_speed.py --backends --image-size 64

LambdaResNet26T and LambdaResNet50TS against timm's same models: ``same_models.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

from platform_facts import facts as platform_facts  # benchmarks/ is on sys.path as a script
from results_csv import write_csv
from timing import median_seconds

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (the paper's params in M, the paper's inference ex/s on 8 TPUv3 cores)
PAPER = {
    "LambdaResNet50": (None, None),
    "ResNetRS50 (SE)": (None, None),
    "keras ResNet50": (25.6, None),
    "CCCC": (25.6, 7240),
    "LCCC": (25.5, 1880),
    "LLCC": (25.0, 1280),
    "LLLC": (21.7, 1160),
    "LLLL": (15.0, 1160),
    "CLLL": (15.1, 2200),
    "CCLL": (15.4, 4980),
    "CCCL": (18.8, 7160),
    "LambdaResNet101": (36.9, 4040),
    "ResNetRS101 (SE)": (63.6, 4000),
}
RATIOS = [("CCLL", "CCCC", 0.69), ("LambdaResNet101", "ResNetRS101 (SE)", 1.0)]


def build(name: str, image_size: int):
    import keras

    import lambda_keras as lk

    shape = (image_size, image_size, 3)
    if name == "LambdaResNet50":
        return lk.LambdaResNet50(input_shape=shape)
    if name == "ResNetRS50 (SE)":
        return lk.ResNetRS50(input_shape=shape)
    if name == "keras ResNet50":
        return keras.applications.ResNet50(weights=None, input_shape=shape)
    if name == "LambdaResNet101":
        return lk.LambdaResNet101(input_shape=shape)
    if name == "ResNetRS101 (SE)":
        return lk.ResNetRS101(input_shape=shape)
    return lk.HybridResNet50(placement=name, input_shape=shape)


def measure(name: str, image_size: int, batch: int, repeats: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from lambda_keras.models import multiply_adds

    model = build(name, image_size)
    images = tf.random.uniform((batch, image_size, image_size, 3), seed=0)
    labels = np.arange(batch) % 1000
    forward = tf.function(lambda x: model(x, training=False))
    inference = median_seconds(lambda: forward(images).numpy(), repeats)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    training = median_seconds(lambda: model.train_on_batch(images, labels), repeats)
    params = sum(math.prod(w.shape) for w in model.trainable_weights)
    paper_params, paper_throughput = PAPER[name]
    row = {
        "model": name,
        "params_m": round(params / 1e6, 2),
        "paper_params_m": paper_params,
        "gmacs": round(multiply_adds(model) / 1e9, 2),
        "inference_img_s": round(batch / inference, 2),
        "training_img_s": round(batch / training, 2),
        "paper_inference_ex_s_tpu": paper_throughput,
        **platform_facts(),
    }
    keras.backend.clear_session()
    return row


# (label, environment) of each backend process of --backends.
BACKEND_RUNS = [
    ("tensorflow, oneDNN on", {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "1"}),
    ("tensorflow, oneDNN off", {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"}),
    ("jax", {"KERAS_BACKEND": "jax"}),
    ("torch", {"KERAS_BACKEND": "torch"}),
]


def backend_step(image_size: int, batch: int, repeats: int) -> dict:
    """LambdaResNet50's inference and training step under this process's backend."""
    import keras
    import numpy as np

    import lambda_keras as lk

    model = lk.LambdaResNet50(input_shape=(image_size, image_size, 3))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32")
    labels = np.arange(batch) % 1000
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    inference = median_seconds(lambda: model.predict_on_batch(images), repeats)
    training = median_seconds(lambda: model.train_on_batch(images, labels), repeats)
    return {"inference_ms": round(1000 * inference, 1), "training_ms": round(1000 * training, 1),
            "jit_compile": model.jit_compile, **platform_facts()}


def run_backends(image_size: int, batch: int, repeats: int, rounds: int) -> list[dict]:
    timings = {label: [] for label, _ in BACKEND_RUNS}
    for _ in range(rounds):
        for label, environment in BACKEND_RUNS:
            result = subprocess.run(
                [sys.executable, __file__, "--backend-worker", "--image-size", str(image_size),
                 "--batch", str(batch), "--repeats", str(repeats)],
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **environment}, capture_output=True, text=True,
            )
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            if result.returncode or not lines:
                timings[label].append({"status": f"failed: {result.stderr.strip()[-300:]}"})
            else:
                timings[label].append({**json.loads(lines[-1]), "status": "ok"})
            print(label, timings[label][-1], flush=True)
    rows = []
    for label, runs in timings.items():
        ok = [run for run in runs if run["status"] == "ok"]
        row = {"model": "LambdaResNet50", "image_size": image_size, "batch": batch, "run": label,
               "rounds": len(ok), "status": "ok" if ok else runs[-1]["status"]}
        if ok:
            row.update({key: value for key, value in ok[-1].items() if key not in ("inference_ms", "training_ms")})
            row["inference_ms"] = round(statistics.median(run["inference_ms"] for run in ok), 1)
            row["training_ms"] = round(statistics.median(run["training_ms"] for run in ok), 1)
            row["training_img_s"] = round(batch / row["training_ms"] * 1000, 1)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(PAPER), help="subset of: " + ", ".join(PAPER))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the CSV and PNG go")
    parser.add_argument("--backends", action="store_true", help="LambdaResNet50 under each Keras backend")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of --backends")
    parser.add_argument("--backend-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend_worker:
        print(json.dumps(backend_step(args.image_size, args.batch, args.repeats)), flush=True)
        return
    if args.backends:
        rows = run_backends(args.image_size, args.batch, args.repeats, args.rounds)
        args.results.mkdir(parents=True, exist_ok=True)
        write_csv(args.results / "model_speed_backends.csv", rows)
        for row in rows:
            print(row)
        return

    rows = []
    for name in args.models:
        rows.append(measure(name, args.image_size, args.batch, args.repeats))
        print(rows[-1], flush=True)

    args.results.mkdir(parents=True, exist_ok=True)
    write_csv(args.results / "model_speed.csv", rows)

    by_name = {row["model"]: row for row in rows}
    print(f"\nCPU, {args.image_size}x{args.image_size}, batch {args.batch}\n")
    print("| model | params (M) | paper params (M) | G multiply-adds | inference img/s | training img/s "
          "| paper ex/s (8 TPUv3) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['params_m']} | {row['paper_params_m'] or '-'} | {row['gmacs']} | "
            f"{row['inference_img_s']} | {row['training_img_s']} | {row['paper_inference_ex_s_tpu'] or '-'} |"
        )
    for numerator, denominator, floor in RATIOS:
        if numerator in by_name and denominator in by_name:
            ratio = by_name[numerator]["inference_img_s"] / by_name[denominator]["inference_img_s"]
            print(
                f"\n{numerator} / {denominator} inference throughput: {ratio:.2f}x "
                f"(paper: {PAPER[numerator][1] / PAPER[denominator][1]:.2f}x, floor {floor}x: "
                f"{'met' if ratio >= floor else 'NOT met'})"
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        axis.scatter(row["params_m"], row["inference_img_s"])
        axis.annotate(row["model"], (row["params_m"], row["inference_img_s"]), fontsize=7)
    axis.set_xlabel("trainable parameters (M)")
    axis.set_ylabel(f"CPU inference images/s (batch {args.batch})")
    axis.set_title(f"Models at {args.image_size}x{args.image_size} on this CPU")
    figure.tight_layout()
    figure.savefig(args.results / "model_speed.png", dpi=120)


if __name__ == "__main__":
    main()
