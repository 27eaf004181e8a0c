"""LambdaResNet26T and LambdaResNet50TS against timm's same models, each case in fresh processes.

The comparison a user would make: the same architecture, the same input, inference and
training images/s, ours against timm's ``lambda_resnet26t`` and ``lambda_resnet50ts``.
Every case (one side, one model, one precision) runs in its own fresh process, and
``--processes N`` runs each case N times, round-robin, so that a slow spell of the
machine meets every side; a side's processes can differ by several times (timm's on a
CPU have), so the table gives every side's slowest and fastest process and ranks our
median process against the peer's fastest.

Sides:

- ``keras-jax``: our model under Keras's JAX backend. Inference is ``predict_on_batch``
  (a ``jax.jit`` step); training is ``fit`` on a generator of the same device-resident
  batch, so its steps are Keras's compiled train steps without a host copy.
- ``keras-tensorflow``: under TensorFlow (oneDNN as the process chose it):
  ``predict_on_batch`` and ``train_on_batch``, both ``tf.function`` steps. CPU only.
- ``timm-eager`` and ``timm-compile``: timm's model in PyTorch eager and under
  ``torch.compile``, channels_last, SGD with momentum and cross-entropy.

Precisions: ``float32``, and ``bfloat16`` (Keras's ``mixed_bfloat16`` policy; PyTorch's
``autocast`` to bfloat16). Training uses SGD (momentum 0.9) on sparse cross-entropy
with 1000 classes, on random images.

On a GPU (``--device gpu``) each case starts at ``--batch`` (256) and halves it until the
case fits; the cases run in priority order (LambdaResNet50TS in bfloat16 first) until
``--budget-s`` is spent. On the CPU (``--device cpu``) inference is timed at batch 1 and
``--batch`` (8), training at ``--batch``.

    python benchmarks/same_models.py --device cpu --processes 5 \\
        --timm-python .venv-peers/bin/python               # the CPU table
    python benchmarks/same_models.py --device gpu --budget-s 420  # the GPU table, one call

``--lambda-layers pass-through`` (or ``both``) also times every model with each lambda
layer replaced by a pass-through of its output's shape (the input's first channels, then
the layer's own average pool where it strides; timm's and ours alike), so that the
difference is what the lambda layers cost in place.

Writes ``same_models_{device}.csv`` (every process) to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import call_seconds  # noqa: E402  benchmarks/ is on sys.path

MODELS = {"LambdaResNet26T": "lambda_resnet26t", "LambdaResNet50TS": "lambda_resnet50ts"}
PRECISIONS = ("bfloat16", "float32")
SIDES = {"cpu": ("keras-tensorflow", "keras-jax", "timm-eager", "timm-compile"),
         "gpu": ("keras-jax", "timm-compile", "timm-eager")}
CLASSES = 1000
OUT_OF_MEMORY = 3  # a worker's exit status when its batch does not fit


def cases(models: list[str], precisions: list[str], sides: list[str], lambda_layers: list[str]) -> list[dict]:
    """Every case in priority order: the larger model first, bfloat16 first, ours first."""
    return [{"side": side, "model": model, "precision": precision, "lambda_layers": variant}
            for model in sorted(models, key=lambda name: name != "LambdaResNet50TS")
            for precision in precisions
            for variant in lambda_layers
            for side in sides]


def keras_pass_through() -> None:
    """Every LambdaLayer returns its input's first channels, pooled where it strides."""
    from lambda_keras.layers.lambda_layer import LambdaLayer
    from lambda_keras.layers.pooling import average_pool_same

    def call(self, inputs, training=None, mask=None):
        outputs = inputs[..., : self.filters or inputs.shape[-1]]
        return average_pool_same(outputs, pool_size=self.pool_size, strides=2) if self.strides == 2 else outputs

    LambdaLayer.call = call


def timm_pass_through() -> None:
    """Every timm LambdaLayer returns its input through its own pool."""
    from timm.layers.lambda_layer import LambdaLayer

    LambdaLayer.forward = lambda self, x: self.pool(x)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def keras_worker(case: dict, args) -> dict:
    import keras
    import numpy as np

    from lambda_keras.models import CONSTRUCTORS
    from platform_facts import facts

    if case["lambda_layers"] == "pass-through":
        keras_pass_through()
    if case["precision"] == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    size, batch = args.image_size, args.batch
    model = CONSTRUCTORS[case["model"]](input_shape=(size, size, 3), classifier_activation=None)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    # On the device once: a timing covers the step, not the input's copy.
    images = keras.ops.convert_to_tensor(rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"))
    labels = keras.ops.convert_to_tensor((np.arange(batch) % CLASSES).astype("int32"))
    result = {"batch": batch, **facts(gpu=args.device if args.device == "gpu" else "")}
    if keras.backend.backend() == "jax":
        import jax

        result["framework"] = f"jax {jax.__version__}, keras {keras.__version__}"
    else:
        import tensorflow as tf

        result["framework"] = f"tensorflow {tf.__version__}, keras {keras.__version__}"
    for inference_batch in inference_batches(args):
        subset = images[:inference_batch]
        start = time.perf_counter()
        model.predict_on_batch(subset)
        result[f"first_inference_b{inference_batch}_s"] = round(time.perf_counter() - start, 2)
        times = call_seconds(lambda: model.predict_on_batch(subset), args.repeats, args.warmup)
        result[f"inference_b{inference_batch}_img_s"] = round(inference_batch / median(times), 2)
    if keras.backend.backend() == "jax":
        def batches():
            while True:
                yield images, labels

        start = time.perf_counter()
        model.fit(batches(), steps_per_epoch=max(args.warmup, 1), epochs=1, verbose=0)
        result["first_training_s"] = round(time.perf_counter() - start, 2)
        seconds = []
        for _ in range(args.rounds):  # fit returns once its last step's loss is on the host
            start = time.perf_counter()
            model.fit(batches(), steps_per_epoch=args.repeats, epochs=1, verbose=0)
            seconds.append((time.perf_counter() - start) / args.repeats)
    else:
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        result["first_training_s"] = round(time.perf_counter() - start, 2)
        seconds = call_seconds(lambda: model.train_on_batch(images, labels), args.repeats, args.warmup)
    result["training_img_s"] = round(batch / median(seconds), 2)
    return result


def timm_worker(case: dict, args) -> dict:
    import timm
    import torch

    from platform_facts import facts

    if case["lambda_layers"] == "pass-through":
        timm_pass_through()
    device = "cuda" if args.device == "gpu" else "cpu"
    torch.manual_seed(0)
    size, batch = args.image_size, args.batch
    model = timm.create_model(MODELS[case["model"]], pretrained=False).to(device)
    for module in model.modules():  # the lambda layers' Conv3d weights have no channels_last
        if isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)
    images = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(batch, device=device) % CLASSES
    network = torch.compile(model) if case["side"] == "timm-compile" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=case["precision"] == "bfloat16")

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    def infer(subset):
        with torch.no_grad(), autocast:
            network(subset)
        synchronize()

    def train():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(network(images), labels)
        loss.backward()
        optimizer.step()
        synchronize()

    result = {"batch": batch, "framework": f"timm {timm.__version__}, torch {torch.__version__}",
              "threads": torch.get_num_threads(),
              **facts(backend="torch", gpu=torch.cuda.get_device_name(0) if device == "cuda" else "")}
    model.eval()
    for inference_batch in inference_batches(args):
        subset = images[:inference_batch]
        start = time.perf_counter()
        infer(subset)
        result[f"first_inference_b{inference_batch}_s"] = round(time.perf_counter() - start, 2)
        times = call_seconds(lambda: infer(subset), args.repeats, args.warmup)
        result[f"inference_b{inference_batch}_img_s"] = round(inference_batch / median(times), 2)
    model.train()
    start = time.perf_counter()
    train()
    result["first_training_s"] = round(time.perf_counter() - start, 2)
    result["training_img_s"] = round(batch / median(call_seconds(train, args.repeats, args.warmup)), 2)
    return result


def inference_batches(args) -> list[int]:
    return [args.batch] if args.device == "gpu" else sorted({1, args.batch})


def is_out_of_memory(error: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or type(error).__name__ == "OutOfMemoryError"


def run_worker(args) -> None:
    case = json.loads(args.case)
    worker = timm_worker if case["side"].startswith("timm") else keras_worker
    try:
        print(json.dumps(worker(case, args)), flush=True)
    except Exception as error:  # noqa: BLE001 - the driver halves the batch on a GPU
        if is_out_of_memory(error):
            sys.exit(OUT_OF_MEMORY)
        raise


def run_case(case: dict, batch: int, args) -> dict:
    """One fresh process of one case; on a GPU the batch is halved until it fits."""
    python = args.timm_python if case["side"].startswith("timm") else args.keras_python
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    if case["side"].startswith("keras"):
        environment["KERAS_BACKEND"] = case["side"].removeprefix("keras-")
    while True:
        command = [python, __file__, "--worker", "--case", json.dumps(case), "--device", args.device,
                   "--image-size", str(args.image_size), "--batch", str(batch), "--repeats", str(args.repeats),
                   "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
        start = time.perf_counter()
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        row = {**case, "date": time.strftime("%Y-%m-%d"), "image_size": args.image_size,
               "process_s": round(time.perf_counter() - start, 1)}
        if result.returncode == OUT_OF_MEMORY and batch > 1:
            batch //= 2
            continue
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode or not lines:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])[-300:]
            return {**row, "batch": batch, "status": f"failed ({result.returncode}): {tail}"}
        return {**row, **json.loads(lines[-1]), "status": "ok"}


def table(rows: list[dict]) -> str:
    """The markdown table: each side's slowest to fastest process, and our median process
    against timm's fastest."""
    metrics = [key for key in dict.fromkeys(k for row in rows for k in row) if key.endswith("_img_s")]
    lines = [f"| model | precision | side | processes | {' | '.join(metrics)} |",
             "|---|---|---|---|" + "---|" * len(metrics)]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["model"], row["precision"], row["lambda_layers"], row["side"])
        groups.setdefault(key, []).append(row)
    for (model, precision, variant, side), group in groups.items():
        ok = [row for row in group if row["status"] == "ok"]
        cells = []
        for metric in metrics:
            values = [row[metric] for row in ok if metric in row]
            if not values:
                cells.append("-")
                continue
            peers = [row[metric] for key, rows_ in groups.items() if key[:3] == (model, precision, variant)
                     and key[3].startswith("timm") for row in rows_ if row["status"] == "ok" and metric in row]
            cell = f"{min(values)}-{max(values)}" if len(values) > 1 else f"{values[0]}"
            if side.startswith("keras") and peers:
                cell += f" (**{median(values) / max(peers):.2f}x**)"
            cells.append(cell)
        batch = ",".join(sorted({str(row.get("batch")) for row in group}))
        name = side if variant == "run" else f"{side}, lambda layers {variant}"
        lines.append(f"| {model} | {precision} | {name} (batch {batch}) | {len(ok)}/{len(group)} | "
                     f"{' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="*", choices=PRECISIONS)
    parser.add_argument("--sides", nargs="*", choices=list(dict.fromkeys(SIDES["cpu"] + SIDES["gpu"])),
                        help="default: every side of --device")
    parser.add_argument("--lambda-layers", choices=("run", "pass-through", "both"), default="run",
                        help="time the models as they are, with pass-through lambda layers, or both")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, help="256 on a GPU (halved until it fits), 8 on the CPU")
    parser.add_argument("--processes", type=int, default=1, help="fresh processes per case")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (training steps) per measure")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="timed fit calls of --repeats steps (JAX)")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="no case starts after this")
    parser.add_argument("--keras-python", default=sys.executable)
    parser.add_argument("--timm-python", default=os.environ.get("LAMBDA_KERAS_PEER_PYTHON", sys.executable),
                        help="a python with timm (default: $LAMBDA_KERAS_PEER_PYTHON, else this one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch is None:
        args.batch = 256 if args.device == "gpu" else 8
    if args.worker:
        run_worker(args)
        return
    precisions = args.precisions or (list(PRECISIONS) if args.device == "gpu" else ["float32"])
    variants = ["run", "pass-through"] if args.lambda_layers == "both" else [args.lambda_layers]
    all_cases = cases(args.models, precisions, args.sides or list(SIDES[args.device]), variants)
    rows, start = [], time.perf_counter()
    batches = {}  # a case that had to halve its batch starts there in its next process
    for round_index in range(args.processes):
        for case in all_cases:
            if time.perf_counter() - start > args.budget_s:
                rows.append({**case, "status": "not run: --budget-s spent"})
                continue
            key = json.dumps(case)
            row = run_case(case, batches.get(key, args.batch), args)
            batches[key] = row.get("batch", args.batch)
            rows.append({**row, "process": round_index + 1})
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    from results_csv import write_csv

    write_csv(args.out / f"same_models_{args.device}.csv", rows)
    print(table([row for row in rows if "image_size" in row]))


if __name__ == "__main__":
    main()
