"""One lambda layer on this CPU: our implementations against the PyTorch peers and attention.

Part 1 (speed): r=23, k=16, h=4, u=1, batch 8 at 56x56x64, 28x28x128 and 14x14x256,
forward (inference mode) and forward+backward (training mode, gradient of
``sum(y**2)`` w.r.t. the input and every weight), for each of our implementations
("einsum", "conv", "banded" and what "auto" picks) as ``tf.function`` graphs with
TensorFlow's oneDNN on and off (two workers, ``TF_ENABLE_ONEDNN_OPTS=1`` and ``0``),
eagerly and with XLA (oneDNN on), and for lucidrains' ``lambda-networks`` and timm's
``LambdaLayer`` in PyTorch (run by ``--torch-python``, which must import torch and the
peers; a peer that does not import is recorded as such). Every row records the CPU
model, AVX-512 or not, oneDNN and the framework (``platform_facts.py``).

Part 2 (memory): time and peak resident memory of a forward pass of the layer
against ``keras.layers.MultiHeadAttention`` (global self-attention, 64 channels,
4 heads, key_dim 16, batch 8) at 32^2 .. 256^2, each configuration in a fresh
process, until attention runs out of memory.

Writes ``benchmarks/results/layer_speed.csv``, ``layer_memory.csv`` and
``layer_speed.png``. Timing: 2 warm-up calls per layer, then ``--repeats`` turns in
which each layer is called twice and the second call is timed. Graph mode and the peers run in worker processes
side by side, driven over pipes one call at a time (never at once): this machine's speed jumps by up
to 1.7x from one minute to the next, and calls that alternate within milliseconds meet
the same spell, where separate processes run minutes apart did not. Each row is the
median of its calls (25th and 75th percentiles beside it); the "auto" rows also carry
the paired speed-up, the median over the turns of (faster peer's call / auto's call).
Eager and XLA run afterwards, each worker alone (XLA's thread pool spins after a call).
The timing workers run with glibc's malloc told to keep freed memory
(``KEEP_FREED_MEMORY``): by default the PyTorch peers re-fault their large buffers on
some calls and not others, which made their times bimodal.

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
import tempfile
import threading
import time
from pathlib import Path

from platform_facts import facts as platform_facts  # benchmarks/ is on sys.path as a script
from results_csv import write_csv
from timing import median_seconds

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = [(56, 64), (28, 128), (14, 256)]  # (height = width, channels)
IMPLEMENTATIONS = ("einsum", "conv", "banded", "auto")
BATCH, SCOPE, KEY_DIM, HEADS = 8, 23, 16, 4
MEMORY_SIZES = [32, 64, 128, 256]
MEMORY_LIMIT_BYTES = 20 * 2**30  # a worker above this is killed and recorded as out of memory
# glibc gives freed blocks above its trim threshold back to the kernel, and the next call
# faults them in afresh: lucidrains' layer took 22 or 40 ms per 28x28 call depending on
# the process (its convolution alone 12 vs 21 ms, for a 12.8 MB output). The timing
# workers keep freed memory, so every layer is timed at its best (ours is unaffected).
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def median_ms(function, repeats: int) -> float:
    return 1000 * median_seconds(function, repeats)


def tensorflow_calls(mode: str):
    """The call builder of a TensorFlow worker for `mode` ("graph", "eager", "xla")."""
    import tensorflow as tf

    from lambda_keras import LambdaLayer

    def fetch(outputs):
        tf.nest.map_structure(lambda t: t.numpy(), outputs)

    def build(size: int, channels: int, direction: str):
        inputs = tf.random.normal((BATCH, size, size, channels), seed=0)
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
        return calls, status

    return {"framework": "tensorflow", "mode": mode, **platform_facts()}, build


def torch_calls():
    """The call builder of the PyTorch worker (run by ``--torch-python``)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    peers, failures = {}, {}
    try:
        from lambda_networks import LambdaLayer as LucidrainsLambda

        peers["lucidrains lambda-networks"] = lambda c: LucidrainsLambda(
            c, dim_k=KEY_DIM, r=SCOPE, heads=HEADS, dim_u=1
        )
    except Exception as error:  # noqa: BLE001 - recorded, not hidden
        failures["lucidrains lambda-networks"] = f"import failed: {error}"
    try:
        from timm.layers.lambda_layer import LambdaLayer as TimmLambda

        peers["timm LambdaLayer"] = lambda c: TimmLambda(c, num_heads=HEADS, dim_head=KEY_DIM, r=SCOPE)
    except Exception as error:  # noqa: BLE001
        failures["timm LambdaLayer"] = f"import failed: {error}"

    def build(size: int, channels: int, direction: str):
        inputs = torch.randn(BATCH, channels, size, size)
        calls, status = {}, dict(failures)
        for name, make in peers.items():
            layer = make(channels)

            def forward(layer=layer):
                layer.eval()
                with torch.no_grad():
                    layer(inputs)

            def forward_backward(layer=layer):
                layer.train()
                x = inputs.clone().requires_grad_(True)
                outputs = layer(x)
                (outputs * outputs).sum().backward()

            calls[name] = forward if direction == "forward" else forward_backward
            for _ in range(2):
                calls[name]()
            status[name] = "ok"
        return calls, status

    return {"framework": f"torch {torch.__version__}", "mode": "eager", **platform_facts(backend="torch")}, build


def serve(facts: dict, build) -> None:
    """Worker side: answers one JSON request per stdin line, one at a time.

    ``{"setup": [size, channels, direction]}`` builds and warms up the layers and
    answers their names and status; ``{"call": name}`` calls a layer twice and times
    the second call: the first after the other worker's turn wakes this process's
    threads and refills the caches (measured: +50% at 14x14), a cost that would fall
    on whichever layer a worker happens to call first.
    """
    calls: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "setup" in request:
            calls, status = build(*request["setup"])
            reply = {**facts, "status": status}
        else:
            calls[request["call"]]()
            start = time.perf_counter()
            calls[request["call"]]()
            reply = {"seconds": time.perf_counter() - start}
        print(json.dumps(reply), flush=True)


class Worker:
    """A worker process driven over pipes; its stderr goes to a file, read on failure."""

    def __init__(self, command: list[str], environment: dict | None = None):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, **KEEP_FREED_MEMORY, **(environment or {})},
        )

    def ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.log.seek(0)
        raise RuntimeError(f"worker {self.process.args[1:]} exited: {self.log.read()[-500:]}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def run_interleaved(commands: list[tuple[list[str], dict]], repeats: int) -> list[dict]:
    """Times every layer of every worker in turn, one call at a time, `repeats` times.

    The workers live side by side but never run at once. Calls alternate within
    milliseconds, so a slow spell of the shared machine hits our layers and the
    peers alike; each row is the median of its calls. With peers present, the
    "auto" row also gets the median over the turns of (faster peer's call / auto's
    call), the paired speed-up.
    """
    workers = [Worker(command, environment) for command, environment in commands]
    rows = []
    try:
        for size, channels in STAGES:
            for direction in ("forward", "forward+backward"):
                timed, failed = [], []  # (worker, name, facts)
                for worker in workers:
                    reply = worker.ask({"setup": [size, channels, direction]})
                    facts = {key: value for key, value in reply.items() if key != "status"}
                    for name, status in reply["status"].items():
                        (timed if status == "ok" else failed).append((worker, name, {**facts, "status": status}))
                seconds = {(worker, name): [] for worker, name, _ in timed}
                for _ in range(repeats):
                    for worker, name, _ in timed:
                        seconds[worker, name].append(worker.ask({"call": name})["seconds"])
                for worker, name, facts in timed + failed:
                    times = seconds.get((worker, name))
                    row = {
                        **facts, "implementation": name, "size": f"{size}x{size}x{channels}", "direction": direction,
                        "ms": round(1000 * statistics.median(times), 1) if times else float("nan"),
                        "ms_p25": round(1000 * _quantile(times, 0.25), 1) if times else "",
                        "ms_p75": round(1000 * _quantile(times, 0.75), 1) if times else "",
                        "calls": len(times or ()),
                    }
                    rows.append((worker, row))
                    print(row, flush=True)
                _add_paired_speedup(rows[-len(timed + failed):], seconds)
    finally:
        for worker in workers:
            worker.close()
    return [row for _, row in rows]


def _quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[round(fraction * (len(ordered) - 1))]


def _add_paired_speedup(rows: list[tuple], seconds: dict[tuple, list[float]]) -> None:
    """``rows`` and ``seconds`` are keyed by (worker, layer name)."""
    peers = [(worker, row["implementation"]) for worker, row in rows
             if row["framework"] != "tensorflow" and row["status"] == "ok"]
    for worker, row in rows:
        if row["implementation"].startswith("lambda_keras auto") and row["status"] == "ok" and peers:
            turns = zip(seconds[worker, row["implementation"]], *(seconds[peer] for peer in peers))
            row["speedup_vs_faster_peer"] = round(statistics.median(min(peer) / ours for ours, *peer in turns), 2)


def run_speed(torch_python: str, repeats: int, other_repeats: int) -> list[dict]:
    """Graph mode with oneDNN on and off interleaved with the peers; then eager and XLA
    (oneDNN on), each alone."""
    worker = [sys.executable, __file__, "--tensorflow-worker"]
    onednn_on, onednn_off = {"TF_ENABLE_ONEDNN_OPTS": "1"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}
    rows = run_interleaved(
        [(worker + ["graph"], onednn_on), (worker + ["graph"], onednn_off),
         ([torch_python, __file__, "--torch-worker"], {})],
        repeats,
    )
    for mode in ("eager", "xla"):  # alone: XLA's thread pool spins for a while after a call
        rows += run_interleaved([(worker + [mode], onednn_on)], other_repeats)
    return rows


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
    row = {"layer": kind, "size": f"{size}x{size}", "ms": round(ms, 1), "peak_rss_mib": round(_peak_rss_kib() / 1024),
           "before_first_call_mib": round(baseline / 1024), "status": status, **platform_facts()}
    print(json.dumps(row), flush=True)


def _peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM). Unlike ``ru_maxrss``, which Linux
    carries across exec from the forking parent, VmHWM starts fresh in a new program."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


def _watch_memory(process: subprocess.Popen, limit: int, killed: list) -> None:
    status_file = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            lines = status_file.read_text().splitlines()
            rss_kib = next(int(line.split()[1]) for line in lines if line.startswith("VmRSS"))
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
                last_error = stderr.strip().splitlines()[-1:]
                reason = f"killed above {MEMORY_LIMIT_BYTES // 2**30} GiB" if killed else last_error
                row = {"layer": kind, "size": f"{size}x{size}", "ms": float("nan"), "peak_rss_mib": "",
                       "before_first_call_mib": "", "status": f"out of memory ({reason})"}
            rows.append(row)
            print(row, flush=True)
            if kind == "attention" and row["status"] != "ok":
                break  # attention ran out of memory: larger inputs will too
    return rows


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
            if row["framework"] == "tensorflow" and str(row.get("onednn")) == "0":
                label += " oneDNN off"
            series.setdefault(label, {})[row["size"]] = row["ms"]
        sizes = [f"{s}x{s}x{c}" for s, c in STAGES]
        width = 0.8 / max(len(series), 1)
        for index, (label, values) in enumerate(sorted(series.items())):
            positions = [i + index * width for i in range(len(sizes))]
            axis.bar(positions, [values.get(s, 0) for s in sizes], width, label=label)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], sizes)
        axis.set_ylabel("ms (median)")
        axis.set_title(f"one lambda layer, batch {BATCH}, r={SCOPE}: {direction}")
        axis.legend(fontsize=7)
    axis = axes[2]
    for kind in ("lambda", "attention"):
        points = [(int(r["size"].split("x")[0]), r["peak_rss_mib"])
                  for r in memory_rows if r["layer"] == kind and r["status"] == "ok"]
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
    parser.add_argument("--repeats", type=int, default=15, help="calls per layer, graph mode and the peers")
    parser.add_argument("--other-repeats", type=int, default=5, help="calls per layer, eager and XLA")
    parser.add_argument("--skip-speed", action="store_true", help="reuse results/layer_speed.csv")
    parser.add_argument("--skip-memory", action="store_true", help="reuse results/layer_memory.csv")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tensorflow-worker", choices=("graph", "eager", "xla"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        serve(*torch_calls())
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.memory_worker:
        memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args.repeats)
        return
    if args.tensorflow_worker:
        serve(*tensorflow_calls(args.tensorflow_worker))
        return
    RESULTS.mkdir(exist_ok=True)
    if args.skip_speed:
        speed_rows = read_csv(RESULTS / "layer_speed.csv")
    else:
        speed_rows = run_speed(args.torch_python, args.repeats, args.other_repeats)
        write_csv(RESULTS / "layer_speed.csv", speed_rows)
    if args.skip_memory:
        memory_rows = read_csv(RESULTS / "layer_memory.csv")
    else:
        memory_rows = run_memory(min(args.repeats, 3))
        write_csv(RESULTS / "layer_memory.csv", memory_rows)
    plot(speed_rows, memory_rows, RESULTS / "layer_speed.png")


if __name__ == "__main__":
    main()
