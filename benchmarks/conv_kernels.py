"""Which oneDNN kernel runs the lambda convolution, and how long it takes, in each framework.

The layer benchmark (``layer_speed.py``) leaves our 28x28 inference behind lucidrains';
this script records why. Each case runs in its own process with ``ONEDNN_VERBOSE=1``,
which prints every primitive execution with its implementation name and time. The
cases run round-robin, ``--rounds`` times (this machine's speed drifts from minute to
minute). Each round times ``--repeats`` calls after 3 warm-up calls (primitive
creation); a row is the median of a case's convolution primitives over all rounds, not
the wall time of the op around it.

Cases (r=23, k=16, u=1, v=32 value channels, batch 8, 28x28 unless named):
- ``tf conv3d``: ``keras.ops.conv`` over ``[b, v, H, W, 1]``, the peer's problem;
- ``tf lambda_convolution HxW``: our lambda convolution at 14x14 (batch 32), 28x28
  (batch 8) and 56x56 (batch 2): an equal number of outputs, so the times compare the
  taps that fall inside the map;
- ``tf depthwise`` / ``tf grouped``: the values' ``v`` channels as groups of one input
  channel (``keras.ops.depthwise_conv``, ``tf.nn.conv2d`` with a grouped filter);
- ``tf conv3d bf16`` / ``torch conv3d bf16``: the same in bfloat16 (AMX), for scale;
- ``torch conv3d``: lucidrains' ``Conv3d`` over ``[b, 1, v, H, W]``.

Writes ``benchmarks/results/conv_kernels.csv``.

    python benchmarks/conv_kernels.py --torch-python /path/to/python-with-torch
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path

from layer_speed import BATCH, KEEP_FREED_MEMORY, KEY_DIM, SCOPE  # benchmarks/ is on sys.path

RESULTS = Path(__file__).resolve().parent / "results"
VALUE_DIM = 32  # 28x28x128 with 4 heads
WARMUP = 3
TENSORFLOW_CASES = (
    "conv3d", "lambda_convolution 14x14", "lambda_convolution 28x28", "lambda_convolution 56x56",
    "depthwise", "grouped", "conv3d bf16",
)
TORCH_CASES = ("conv3d", "conv3d bf16")


def tensorflow_case(case: str):
    """A call that runs the case once, in TensorFlow."""
    import tensorflow as tf
    from keras import ops

    from lambda_keras.layers.lambda_convolution import lambda_convolution

    size, batch = 28, BATCH
    if case.startswith("lambda_convolution"):
        size = int(case.split()[-1].split("x")[0])
        batch = BATCH * 28 * 28 // (size * size)  # the same number of outputs at every size
        values = tf.random.normal((batch, size * size, 1, VALUE_DIM))
        table = tf.random.normal((SCOPE, SCOPE, KEY_DIM, 1))
        function = tf.function(lambda: ops.sum(lambda_convolution(values, table, (size, size))))
    elif case.startswith("conv3d"):
        dtype = "bfloat16" if case.endswith("bf16") else "float32"
        maps = tf.cast(tf.random.normal((batch, VALUE_DIM, size, size, 1)), dtype)
        kernel = tf.cast(tf.random.normal((1, SCOPE, SCOPE, 1, KEY_DIM)), dtype)
        function = tf.function(lambda: ops.sum(ops.cast(ops.conv(maps, kernel, padding="same"), "float32")))
    else:
        maps = tf.random.normal((batch, size, size, VALUE_DIM))
        table = tf.random.normal((SCOPE, SCOPE, 1, KEY_DIM))
        if case == "depthwise":  # kernel [*T, channels, multiplier]
            function = tf.function(
                lambda: ops.sum(ops.depthwise_conv(maps, ops.tile(table, (1, 1, VALUE_DIM, 1)), padding="same"))
            )
        else:  # grouped: kernel [*T, in per group = 1, out = groups * k]
            kernel = ops.tile(table, (1, 1, 1, VALUE_DIM))
            function = tf.function(lambda: ops.sum(tf.nn.conv2d(maps, kernel, 1, "SAME")))
    return lambda: function().numpy()


def torch_case(case: str):
    """A call that runs the case once, in PyTorch (lucidrains' ``Conv3d`` layout)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = torch.bfloat16 if case.endswith("bf16") else torch.float32
    maps = torch.randn(BATCH, 1, VALUE_DIM, 28, 28, dtype=dtype)
    kernel = torch.randn(KEY_DIM, 1, 1, SCOPE, SCOPE, dtype=dtype)

    def call():
        with torch.no_grad():
            torch.nn.functional.conv3d(maps, kernel, padding=(0, SCOPE // 2, SCOPE // 2))

    return call


def case_times(python: str, framework: str, case: str, repeats: int) -> tuple[list[float], str, str]:
    """Runs one case in a fresh process: its convolution primitives' times (ms), the
    implementation and the problem, from the verbose log."""
    env = {**os.environ, **KEEP_FREED_MEMORY, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [python, __file__, "--worker", framework, case, "--repeats", str(repeats)],
        capture_output=True, text=True, env=env, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{framework} {case!r} failed: {result.stderr[-500:]}")
    # onednn_verbose,v1,primitive,exec,cpu,convolution,<implementation>,...,<problem>,<ms>
    executions = [
        line.split(",") for line in result.stdout.splitlines()
        if line.startswith("onednn_verbose") and ",exec,cpu,convolution," in line
    ][-repeats:]
    if len(executions) < repeats:
        raise RuntimeError(f"{framework} {case!r}: {len(executions)} convolution executions in the verbose log")
    return [float(fields[-1]) for fields in executions], executions[-1][6], executions[-1][-2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=sys.executable, help="a Python that imports torch")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin passes over the cases")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, case = args.worker
        call = (tensorflow_case if framework == "tf" else torch_case)(case)
        for _ in range(WARMUP + args.repeats):
            call()
        return
    cases = [(sys.executable, "tf", case) for case in TENSORFLOW_CASES]
    cases += [(args.torch_python, "torch", case) for case in TORCH_CASES]
    times = {case: [] for case in cases}
    facts = {}
    for _ in range(args.rounds):
        for case in cases:
            case_ms, implementation, problem = case_times(*case, args.repeats)
            times[case] += case_ms
            facts[case] = {"implementation": implementation, "problem": problem}
    rows = [
        {"framework": case[1], "case": case[2], **facts[case],
         "ms": round(statistics.median(times[case]), 2), "calls": len(times[case])}
        for case in cases
    ]
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "conv_kernels.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
