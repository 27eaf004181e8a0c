"""Where ``implementation="auto"`` switches, per platform: every implementation of one
lambda layer at growing sizes, inference and training, as ``tf.function`` graphs.

r=23, k=16, h=4, u=1, batch 8; sizes 14x14x256 .. 80x80x64 (channels shrink as in a
ResNet). The convolution runs in both forms where the platform has the dilated kernel
(oneDNN on) and in the folded form only where it does not. Run it once per setting;
rows carry the CPU, AVX-512 and oneDNN columns, and the results file keeps the rows of
other settings:

    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/auto_crossovers.py
    TF_ENABLE_ONEDNN_OPTS=1 python benchmarks/auto_crossovers.py

Writes ``benchmarks/results/auto_crossovers.csv``. With ``--scope-sizes`` and
``--batches`` it instead times the small maps where the einsum competes (8x8x512 ..
32x32x128) at each scope size and batch, and writes ``auto_crossovers_scope.csv``:

    python benchmarks/auto_crossovers.py --scope-sizes 7 9 15 23 --batches 1 8

Under Keras's JAX and PyTorch backends (``KERAS_BACKEND=jax``) the layer runs as
``jax.jit`` and eager PyTorch calls (``layer_calls.compiled_call``). Both files keep the
rows of the other settings (CPU, oneDNN, backend) that they already hold.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from layer_calls import compiled_call  # noqa: E402  benchmarks/ is on sys.path
from platform_facts import facts as platform_facts  # noqa: E402
from results_csv import write_csv  # noqa: E402
from timing import median_seconds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "auto_crossovers.csv"
STAGES = [(14, 256), (20, 192), (28, 128), (40, 96), (56, 64), (80, 64)]
SMALL_STAGES = [(8, 512), (12, 384), (16, 256), (20, 192), (24, 160), (32, 128)]
BATCH, REPEATS = 8, 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scope-sizes", type=int, nargs="*")
    parser.add_argument("--batches", type=int, nargs="*")
    args = parser.parse_args()
    if args.scope_sizes or args.batches:
        rows = [row for scope_size in args.scope_sizes or [23] for batch in args.batches or [BATCH]
                for row in measure(SMALL_STAGES, scope_size, batch)]
        write_keeping_other_settings(RESULTS.with_name("auto_crossovers_scope.csv"), rows)
        return
    write_keeping_other_settings(RESULTS, measure(STAGES, 23, BATCH))


def write_keeping_other_settings(path: Path, rows: list[dict]) -> None:
    """Writes ``rows`` to ``path`` in place of the rows of their setting (CPU, AVX-512,
    oneDNN, backend); the rows of other settings stay."""
    setting_keys = ("cpu", "avx512", "onednn", "backend")
    setting = tuple(str(rows[0][key]) for key in setting_keys)
    kept = []
    if path.exists():
        with path.open() as handle:
            kept = [row for row in csv.DictReader(handle)
                    if tuple(row.get(key, "") for key in setting_keys) != setting]
    path.parent.mkdir(exist_ok=True)
    write_csv(path, kept + rows)


def measure(stages: list[tuple[int, int]], scope_size: int, batch: int) -> list[dict]:
    import keras
    import numpy as np

    from lambda_keras import LambdaLayer
    from lambda_keras.layers import kernel_support, lambda_layer

    facts = platform_facts()
    forms = ["dilated", "folded"] if kernel_support.has_dilated_transposed_convolution() else ["folded"]
    rows = []
    for size, channels in stages:
        inputs = keras.ops.convert_to_tensor(
            np.random.default_rng(0).normal(size=(batch, size, size, channels)).astype("float32"))
        for direction in ("forward", "forward+backward"):
            training = direction != "forward"
            candidates = [("einsum", None), ("banded", None)] + [("conv", form) for form in forms]
            for implementation, form in candidates:
                if implementation == "einsum" and size > 40:
                    continue  # its [n, m, k] table alone is gigabytes
                if form is not None:
                    lambda_layer._convolution_form = lambda form=form: form
                layer = LambdaLayer(key_dim=16, num_heads=4, scope_size=scope_size, implementation=implementation)
                layer.build(inputs.shape)

                call = compiled_call(layer, training)
                seconds = median_seconds(
                    lambda: keras.tree.map_structure(keras.ops.convert_to_numpy, call(inputs)), REPEATS)
                row = {**facts, "size": f"{size}x{size}x{channels}", "scope_size": scope_size, "batch": batch,
                       "direction": direction,
                       "implementation": implementation if form is None else f"conv ({form})",
                       "ms": round(1000 * seconds, 2)}
                rows.append(row)
                print(row, flush=True)
    return rows


if __name__ == "__main__":
    main()
