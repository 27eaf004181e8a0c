"""One lambda layer on this CPU: our implementations against the PyTorch peers and attention.

Part 1 (speed): r=23, k=16, h=4, u=1, batch 8 at 56x56x64, 28x28x128 and 14x14x256,
forward (inference mode) and forward+backward (training mode, gradient of
``sum(y**2)`` w.r.t. the input and every weight), for each of our implementations
("einsum", "conv", "banded" and what "auto" picks) run eagerly, as a ``tf.function``
graph and with XLA, and for lucidrains'
``lambda-networks`` and timm's ``LambdaLayer`` in PyTorch (run by ``--torch-python``,
which must import torch and the peers; a peer that does not import is recorded as
such).

Part 2 (memory): time and peak resident memory of a forward pass of the layer
against ``keras.layers.MultiHeadAttention`` (global self-attention, 64 channels,
4 heads, key_dim 16, batch 8) at 32^2 .. 256^2, each configuration in a fresh
process, until attention runs out of memory.

Writes ``benchmarks/results/layer_speed.csv``, ``layer_memory.csv`` and
``layer_speed.png``. Timing: 2 warm-up calls, then the median of ``--repeats`` calls.
Every mode runs in its own process; our implementations are timed round-robin; graph
mode and the peers alternate for ``--rounds`` rounds and the median of the rounds is
reported, so that a slow spell of a shared machine does not decide a comparison.

    python benchmarks/layer_speed.py --torch-python /path/to/python-with-torch
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from timing import median_seconds  # benchmarks/ is on sys.path when run as a script

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = [(56, 64), (28, 128), (14, 256)]  # (height = width, channels)
IMPLEMENTATIONS = ("einsum", "conv", "banded", "auto")
BATCH, SCOPE, KEY_DIM, HEADS = 8, 23, 16, 4
MEMORY_SIZES = [32, 64, 128, 256]
MEMORY_LIMIT_BYTES = 20 * 2**30  # a worker above this is killed and recorded as out of memory


def median_ms(function, repeats: int) -> float:
    return 1000 * median_seconds(function, repeats)


def tensorflow_worker(mode: str, repeats: int) -> None:
    """Runs in a fresh process; prints one JSON row per measurement of `mode`.

    Each process measures one mode ("graph", "eager" or "xla") and exits, so no
    thread pool of an earlier mode (XLA's spins for a while after a call) competes
    with the next. Within a size and direction the implementations are timed
    round-robin, one call each per round, so a slow spell of the machine hits all
    of them alike; each figure is the median over the rounds.
    """
    import tensorflow as tf

    from lambda_keras import LambdaLayer

    def fetch(outputs):
        tf.nest.map_structure(lambda t: t.numpy(), outputs)

    for size, channels in STAGES:
        inputs = tf.random.normal((BATCH, size, size, channels), seed=0)
        for direction in ("forward", "forward+backward"):
            training = direction != "forward"
            calls, status = {}, {}
            for implementation in IMPLEMENTATIONS:
                layer = LambdaLayer(key_dim=KEY_DIM, num_heads=HEADS, scope_size=SCOPE, implementation=implementation)
                layer.build(inputs.shape)

                def forward(x, layer=layer):
                    return layer(x, training=False)

                def forward_backward(x, layer=layer):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        outputs = layer(x, training=True)
                        loss = tf.reduce_sum(outputs * outputs)
                    return tape.gradient(loss, [x] + layer.trainable_weights)

                function = forward_backward if training else forward
                if mode != "eager":
                    function = tf.function(function, jit_compile=mode == "xla")
                name = f"lambda_keras {implementation}"
                if implementation == "auto":
                    name += f" ({layer.resolve_implementation(size * size, training=training)})"
                try:
                    for _ in range(2):  # warm-up: tracing, compilation, oneDNN primitives
                        fetch(function(inputs))
                    calls[name], status[name] = (lambda f=function: fetch(f(inputs))), "ok"
                except (tf.errors.ResourceExhaustedError, tf.errors.InternalError) as error:
                    status[name] = type(error).__name__
            seconds = {name: [] for name in calls}
            for _ in range(repeats):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    seconds[name].append(time.perf_counter() - start)
            for name in status:
                ms = 1000 * statistics.median(seconds[name]) if name in seconds else float("nan")
                print(json.dumps({
                    "framework": "tensorflow", "implementation": name, "mode": mode,
                    "size": f"{size}x{size}x{channels}", "direction": direction,
                    "ms": round(ms, 1), "status": status[name],
                }), flush=True)


def run_worker(command: list[str], label: str) -> list[dict]:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode:
        rows.append({"implementation": label, "status": f"exit {completed.returncode}: {completed.stderr[-300:]}"})
    for row in rows:
        print(row, flush=True)
    return rows


def run_speed(torch_python: str, repeats: int, rounds: int) -> list[dict]:
    """Graph mode and the peers alternate for `rounds` rounds (the reported figure is
    the median of the rounds' medians); eager and XLA run once, at the end."""
    script = [sys.executable, __file__, "--repeats", str(repeats)]
    per_round = []
    for _ in range(rounds):
        per_round.append(run_worker(script + ["--tensorflow-worker", "graph"], "tensorflow graph worker"))
        per_round.append(run_torch(torch_python, repeats))
    rows = _median_over_rounds([row for round_rows in per_round for row in round_rows])
    for mode in ("eager", "xla"):
        rows += run_worker(script + ["--tensorflow-worker", mode], f"tensorflow {mode} worker")
    return rows


def _median_over_rounds(rows: list[dict]) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(field) for field in ("framework", "implementation", "mode", "size", "direction"))
        merged.setdefault(key, {**row, "round_ms": []})["round_ms"].append(row.get("ms", float("nan")))
    for row in merged.values():
        row["ms"] = round(statistics.median(row.pop("round_ms")), 1)
    return list(merged.values())


def torch_worker(repeats: int) -> None:
    """Runs in the --torch-python interpreter; prints one JSON row per measurement."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    peers = {}
    try:
        from lambda_networks import LambdaLayer as LucidrainsLambda

        peers["lucidrains lambda-networks"] = lambda c: LucidrainsLambda(c, dim_k=KEY_DIM, r=SCOPE, heads=HEADS, dim_u=1)
    except Exception as error:  # noqa: BLE001 - recorded, not hidden
        print(json.dumps({"implementation": "lucidrains lambda-networks", "status": f"import failed: {error}"}))
    try:
        from timm.layers.lambda_layer import LambdaLayer as TimmLambda

        peers["timm LambdaLayer"] = lambda c: TimmLambda(c, num_heads=HEADS, dim_head=KEY_DIM, r=SCOPE)
    except Exception as error:  # noqa: BLE001
        print(json.dumps({"implementation": "timm LambdaLayer", "status": f"import failed: {error}"}))
    for size, channels in STAGES:
        inputs = torch.randn(BATCH, channels, size, size)
        for name, make in peers.items():
            layer = make(channels)

            def forward():
                layer.eval()
                with torch.no_grad():
                    layer(inputs)

            def forward_backward():
                layer.train()
                x = inputs.clone().requires_grad_(True)
                outputs = layer(x)
                (outputs * outputs).sum().backward()

            for direction, function in (("forward", forward), ("forward+backward", forward_backward)):
                row = {
                    "framework": f"torch {torch.__version__}", "implementation": name, "mode": "eager",
                    "size": f"{size}x{size}x{channels}", "direction": direction,
                    "ms": round(median_ms(function, repeats), 1), "status": "ok",
                }
                print(json.dumps(row), flush=True)


def run_torch(torch_python: str, repeats: int) -> list[dict]:
    return run_worker([torch_python, __file__, "--torch-worker", "--repeats", str(repeats)], "torch worker")


def memory_worker(kind: str, size: int, repeats: int) -> None:
    """One forward configuration in a fresh process; prints a JSON row with ru_maxrss."""
    import tensorflow as tf
    import keras

    from lambda_keras import LambdaLayer

    channels = 64
    inputs = tf.random.normal((BATCH, size * size, channels)) if kind == "attention" else tf.random.normal(
        (BATCH, size, size, channels)
    )
    if kind == "attention":
        layer = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM)
        function = tf.function(lambda x: layer(x, x, training=False))
    else:
        layer = LambdaLayer(key_dim=KEY_DIM, num_heads=HEADS, scope_size=SCOPE)
        function = tf.function(lambda x: layer(x, training=False))
    baseline = _peak_rss_kib()
    try:
        ms = median_ms(lambda: function(inputs).numpy(), repeats)
        status = "ok"
    except tf.errors.ResourceExhaustedError:
        ms, status = float("nan"), "out of memory (ResourceExhaustedError)"
    print(json.dumps({"layer": kind, "size": f"{size}x{size}", "ms": round(ms, 1), "peak_rss_mib": round(_peak_rss_kib() / 1024),
                      "before_first_call_mib": round(baseline / 1024), "status": status}), flush=True)


def _peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM). Unlike ``ru_maxrss``, which Linux
    carries across exec from the forking parent, VmHWM starts fresh in a new program."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


def _watch_memory(process: subprocess.Popen, limit: int, killed: list) -> None:
    status_file = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            rss_kib = next(int(line.split()[1]) for line in status_file.read_text().splitlines() if line.startswith("VmRSS"))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            return
        if rss_kib * 1024 > limit:
            killed.append(rss_kib)
            process.kill()
            return
        time.sleep(0.02)


def run_memory(repeats: int) -> list[dict]:
    rows = []
    for kind in ("lambda", "attention"):
        for size in MEMORY_SIZES:
            process = subprocess.Popen(
                [sys.executable, __file__, "--memory-worker", kind, str(size), "--repeats", str(repeats)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            killed: list = []
            watcher = threading.Thread(target=_watch_memory, args=(process, MEMORY_LIMIT_BYTES, killed))
            watcher.start()
            stdout, stderr = process.communicate()
            watcher.join()
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if lines:
                row = json.loads(lines[-1])
            else:
                reason = f"killed above {MEMORY_LIMIT_BYTES // 2**30} GiB" if killed else stderr.strip().splitlines()[-1:]
                row = {"layer": kind, "size": f"{size}x{size}", "ms": float("nan"), "peak_rss_mib": "",
                       "before_first_call_mib": "", "status": f"out of memory ({reason})"}
            rows.append(row)
            print(row, flush=True)
            if kind == "attention" and row["status"] != "ok":
                break  # attention ran out of memory: larger inputs will too
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["ms"] = float(row["ms"] or "nan")
        if row.get("peak_rss_mib"):
            row["peak_rss_mib"] = int(row["peak_rss_mib"])
    return rows


def plot(speed_rows: list[dict], memory_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(18, 5))
    for axis, direction in zip(axes[:2], ("forward", "forward+backward")):
        series = {}
        for row in speed_rows:
            if row.get("direction") != direction or row.get("status") != "ok":
                continue
            if row["framework"] == "tensorflow" and row["mode"] != "graph":
                continue  # the plot shows tf.function graphs; eager and XLA are in the CSV
            label = row["implementation"].split(" (")[0] + (" [graph]" if row["mode"] == "graph" else " [eager]")
            series.setdefault(label, {})[row["size"]] = row["ms"]
        sizes = [f"{s}x{s}x{c}" for s, c in STAGES]
        width = 0.8 / max(len(series), 1)
        for index, (label, values) in enumerate(sorted(series.items())):
            axis.bar([i + index * width for i in range(len(sizes))], [values.get(s, 0) for s in sizes], width, label=label)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], sizes)
        axis.set_ylabel("ms (median)")
        axis.set_title(f"one lambda layer, batch {BATCH}, r={SCOPE}: {direction}")
        axis.legend(fontsize=7)
    axis = axes[2]
    for kind in ("lambda", "attention"):
        points = [(int(r["size"].split("x")[0]), r["peak_rss_mib"]) for r in memory_rows if r["layer"] == kind and r["status"] == "ok"]
        if points:
            axis.plot(*zip(*points), marker="o", label=f"{kind} peak RSS (MiB)")
        failed = [int(r["size"].split("x")[0]) for r in memory_rows if r["layer"] == kind and r["status"] != "ok"]
        for size in failed:
            axis.axvline(size, color="red", linestyle="--", label=f"{kind}: out of memory at {size}x{size}")
    axis.set_xlabel("input height = width")
    axis.set_ylabel("peak resident memory (MiB)")
    axis.set_yscale("log")
    axis.set_title("forward pass, 64 channels, 4 heads, batch 8")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=sys.executable, help="a Python that imports torch and the peers")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating graph / peer rounds")
    parser.add_argument("--skip-speed", action="store_true", help="reuse results/layer_speed.csv")
    parser.add_argument("--skip-memory", action="store_true", help="reuse results/layer_memory.csv")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tensorflow-worker", choices=("graph", "eager", "xla"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        torch_worker(args.repeats)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN kernels are off by default on this AMD CPU and double TF's conv/matmul speed
    # (stack.md); the setting is recorded in every row.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if args.memory_worker:
        memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args.repeats)
        return
    if args.tensorflow_worker:
        tensorflow_worker(args.tensorflow_worker, args.repeats)
        return
    RESULTS.mkdir(exist_ok=True)
    if args.skip_speed:
        speed_rows = read_csv(RESULTS / "layer_speed.csv")
    else:
        speed_rows = run_speed(args.torch_python, args.repeats, args.rounds)
        for row in speed_rows:
            row["onednn"] = os.environ["TF_ENABLE_ONEDNN_OPTS"] if row.get("framework") == "tensorflow" else ""
        write_csv(RESULTS / "layer_speed.csv", speed_rows)
    if args.skip_memory:
        memory_rows = read_csv(RESULTS / "layer_memory.csv")
    else:
        memory_rows = run_memory(min(args.repeats, 3))
        write_csv(RESULTS / "layer_memory.csv", memory_rows)
    plot(speed_rows, memory_rows, RESULTS / "layer_speed.png")


if __name__ == "__main__":
    main()
