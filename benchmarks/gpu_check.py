"""The lambda layer and LambdaResNet50 on a GPU under the current Keras backend.

Three parts, each row written to ``--out`` as CSV:

1. ``gpu_layer_check.csv``: every implementation in float32, mixed_float16 and
   mixed_bfloat16 against the float64 NumPy reference of the paper (k=16, h=4,
   r=23 on 24x24x64, inference), and whether the training gradients are finite.
2. ``gpu_model_fit.csv``: ``LambdaResNet50.fit`` for a few steps at 128x128, batch
   32, float32 and mixed_bfloat16; the loss and images/s of the timed steps.
3. ``gpu_layer_speed.csv``: one layer at 56x56x64, 28x28x128, 14x14x256 (batch 32
   and 128, ``--layer-batches``; r=23, k=16, h=4), forward and forward+backward, our
   implementations (compiled: ``jax.jit`` of ``stateless_call``; eager under PyTorch;
   ``tf.function`` under TensorFlow) against lucidrains' and timm's PyTorch layers on
   the same GPU. A timing waits for the device, without copying the result to the host;
   ``host_copy_ms`` is that copy, timed apart.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --out benchmarks/results/gpu
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lambda_reference as reference  # noqa: E402
from backend_gradients import loss_gradients  # noqa: E402
from layer_calls import compiled_call  # noqa: E402
from platform_facts import facts  # noqa: E402
from results_csv import write_csv  # noqa: E402
from timing import median_seconds  # noqa: E402

from lambda_keras import LambdaLayer, LambdaResNet50  # noqa: E402

BACKEND = keras.backend.backend()
IMPLEMENTATIONS = ("einsum", "conv", "banded", "auto")
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def gpu_name() -> str:
    if BACKEND == "jax":
        import jax

        return ",".join(d.device_kind for d in jax.devices() if d.platform == "gpu")
    if BACKEND == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    import tensorflow as tf

    return ",".join(d.name for d in tf.config.list_physical_devices("GPU"))


def synchronize(tensors=None):
    """Waits for the GPU: timings must cover the work, not its launch, nor a copy to the host.

    PyTorch and JAX wait on the device; TensorFlow's eager API has no such wait, so its
    results are copied to the host.
    """
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif BACKEND == "jax":
        import jax

        jax.block_until_ready(tensors)
    elif tensors is not None:
        to_host(tensors)


def to_host(tensors) -> None:
    keras.tree.map_structure(lambda t: keras.ops.convert_to_numpy(t) if t is not None else t, tensors)


def median_ms(function, repeats: int) -> float:
    return round(1000 * median_seconds(lambda: synchronize(function()), repeats, warmup=3), 3)


def host_copy_ms(function, repeats: int) -> float:
    """The median time to copy a finished result to the host (the 2026-11-27 JAX timings
    included it, the PyTorch ones did not)."""
    times = []
    for _ in range(repeats):
        outputs = function()
        synchronize(outputs)
        start = time.perf_counter()
        to_host(outputs)
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)


def write(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows)
    for row in rows:
        print(row, flush=True)


@contextlib.contextmanager
def dtype_policy(policy: str):
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


def record_failure(row: dict, error: Exception) -> None:
    """A failed check is a row too: the run goes on to the next one."""
    row["status"] = f"{type(error).__name__}: {error}"[:300]
    traceback.print_exc()


def layer_check(platform: dict) -> list[dict]:
    shape = (2, 24, 24, 64)
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=shape).astype("float32")
    base = LambdaLayer()
    base.build(shape)
    for weight in base.weights:
        value = rng.normal(0.0, 1.0 / np.sqrt(weight.shape[0]) if "kernel" in weight.path else 0.2, weight.shape)
        weight.assign((np.abs(value) + 0.5 if "variance" in weight.path else value).astype("float32"))
    weights = {name: getattr(base, name).numpy().astype(np.float64) for name in
               ("query_kernel", "key_kernel", "value_kernel", "position_embeddings")}
    for name in ("query_norm", "value_norm"):
        norm = getattr(base, name)
        weights[name] = tuple(v.numpy().astype(np.float64) for v in
                              (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))
    expected = reference.lambda_layer(inputs, weights, key_dim=16, num_heads=4, intra_depth=1)
    scale = np.abs(expected).max()
    rows = []
    for policy in POLICIES:
        for implementation in IMPLEMENTATIONS:
            row = {**platform, "policy": policy, "implementation": implementation, "size": "24x24x64"}
            try:
                with dtype_policy(policy):
                    layer = LambdaLayer(implementation=implementation)
                    layer.build(shape)
                    layer.set_weights(base.get_weights())
                    outputs = keras.ops.convert_to_numpy(layer(inputs, training=False)).astype(np.float64)
                    gradients = loss_gradients(layer, inputs)
                row["max_abs_error"] = float(np.abs(outputs - expected).max())
                row["relative_error"] = row["max_abs_error"] / scale
                row["gradients_finite"] = int(all(np.isfinite(g).all() for g in gradients))
                row["status"] = "ok"
            except Exception as error:  # noqa: BLE001 - recorded, the check goes on
                record_failure(row, error)
            rows.append(row)
    return rows


def model_fit(platform: dict, steps: int) -> list[dict]:
    rows = []
    batch, size = 32, 128
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch * steps, size, size, 3)).astype("float32")
    labels = rng.integers(0, 10, batch * steps)
    for policy in ("float32", "mixed_bfloat16"):
        row = {**platform, "model": "LambdaResNet50", "policy": policy, "image_size": size, "batch": batch}
        try:
            with dtype_policy(policy):
                model = LambdaResNet50(input_shape=(size, size, 3), classes=10)
                model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                              loss="sparse_categorical_crossentropy")
                start = time.perf_counter()
                model.fit(images[: batch * 2], labels[: batch * 2], batch_size=batch, epochs=1, verbose=0)
                row["first_steps_s"] = round(time.perf_counter() - start, 2)  # compilation included
                start = time.perf_counter()
                history = model.fit(images, labels, batch_size=batch, epochs=1, verbose=0)
                seconds = time.perf_counter() - start
            row.update(steps=steps, loss=round(history.history["loss"][-1], 4),
                       images_per_s=round(batch * steps / seconds, 1), status="ok")
        except Exception as error:  # noqa: BLE001 - recorded, the check goes on
            record_failure(row, error)
        rows.append(row)
    return rows


def peers_speed(platform: dict, size: int, channels: int, batch: int, repeats: int) -> list[dict]:
    rows = []
    try:
        import torch
    except ImportError:
        return rows
    if not torch.cuda.is_available():
        return rows
    makers = {}
    try:
        from lambda_networks import LambdaLayer as Lucidrains

        makers["lucidrains lambda-networks"] = lambda: Lucidrains(channels, dim_k=16, r=23, heads=4, dim_u=1)
    except ImportError as error:
        rows.append({**platform, "layer": "lucidrains lambda-networks", "status": f"import failed: {error}"})
    try:
        from timm.layers.lambda_layer import LambdaLayer as Timm

        makers["timm LambdaLayer"] = lambda: Timm(channels, num_heads=4, dim_head=16, r=23)
    except ImportError as error:
        rows.append({**platform, "layer": "timm LambdaLayer", "status": f"import failed: {error}"})
    inputs = torch.randn(batch, channels, size, size, device="cuda")

    def sync(_=None):
        torch.cuda.synchronize()

    for name, make in makers.items():
        layer = make().cuda()
        for direction in ("forward", "forward+backward"):
            def call(layer=layer, direction=direction):
                if direction == "forward":
                    layer.eval()
                    with torch.no_grad():
                        return layer(inputs)
                layer.train()
                x = inputs.clone().requires_grad_(True)
                outputs = layer(x)
                (outputs * outputs).sum().backward()
                return x.grad

            for _ in range(3):
                call()
            sync()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                sync()
                times.append(time.perf_counter() - start)
            rows.append({**platform, "backend": f"torch {torch.__version__} eager", "layer": name,
                         "size": f"{size}x{size}x{channels}", "batch": batch, "direction": direction,
                         "ms": round(1000 * sorted(times)[len(times) // 2], 3), "status": "ok"})
    return rows


def layer_speed(platform: dict, repeats: int, batch: int) -> list[dict]:
    rows = []
    for size, channels in ((56, 64), (28, 128), (14, 256)):
        inputs = keras.ops.convert_to_tensor(
            np.random.default_rng(0).normal(size=(batch, size, size, channels)).astype("float32")
        )
        for direction in ("forward", "forward+backward"):
            training = direction != "forward"
            for implementation in IMPLEMENTATIONS:
                layer = LambdaLayer(implementation=implementation)
                layer.build(inputs.shape)
                name = f"lambda_keras {implementation}"
                if implementation == "auto":
                    name += f" ({layer.resolve_implementation(size * size, training=training)})"
                row = {**platform, "layer": name, "size": f"{size}x{size}x{channels}", "batch": batch,
                       "direction": direction}
                try:
                    function = compiled_call(layer, training)
                    row.update(ms=median_ms(lambda: function(inputs), repeats),
                               host_copy_ms=host_copy_ms(lambda: function(inputs), repeats), status="ok")
                except Exception as error:  # noqa: BLE001 - recorded, the check goes on
                    record_failure(row, error)
                rows.append(row)
                print(row, flush=True)
        rows += peers_speed(platform, size, channels, batch, repeats)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fit-steps", type=int, default=20)
    parser.add_argument("--parts", default="check,fit,speed")
    parser.add_argument("--layer-batches", default="32,128", help="batches of the layer timings")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    platform = facts(gpu=gpu_name())
    print(platform, flush=True)
    parts = args.parts.split(",")
    if "check" in parts:
        write(args.out / f"gpu_layer_check_{BACKEND}.csv", layer_check(platform))
    if "fit" in parts:
        write(args.out / f"gpu_model_fit_{BACKEND}.csv", model_fit(platform, args.fit_steps))
    if "speed" in parts:
        rows = []
        for batch in (int(value) for value in args.layer_batches.split(",")):
            rows += layer_speed(platform, args.repeats, batch)
        write(args.out / f"gpu_layer_speed_{BACKEND}.csv", rows)


if __name__ == "__main__":
    main()
