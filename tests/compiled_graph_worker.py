"""The XLA CPU graph of a lambda layer under Keras's JAX backend, in its own process.

tests/test_compiled_graphs.py runs it once for all its cases (the test process runs
TensorFlow, and the backend is fixed when Keras is imported):

    KERAS_BACKEND=jax python tests/compiled_graph_worker.py CASES.json OUT.json

Each case is ``{"config": LambdaLayer kwargs, "shape": input shape}``. For each, the
layer's inference call (``stateless_call``) is jitted and compiled for the CPU, and the
optimised HLO's transposes, copies and broadcasts are counted, with XLA's cost analysis.
"""

from __future__ import annotations

import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from lambda_keras import LambdaLayer  # noqa: E402

COUNTED = ("transpose", "copy", "broadcast")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
# `%name = shape opcode(operands), attributes`; a tuple shape is in parentheses.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|\S+)\s+([a-z][\w\-]*)\((.*?)\)")


def count_ops(hlo_text: str) -> dict:
    """Transposes, copies and broadcasts of an optimised HLO module, in every
    computation, fusion bodies included: XLA's CPU backend wraps nearly every op in a
    fusion, and a transpose inside a loop fusion still rewrites its whole input. A
    broadcast of a scalar (a constant splat) is free and not counted."""
    counts = dict.fromkeys(COUNTED, 0)
    shapes: dict[str, str] = {}
    for line in hlo_text.splitlines():
        if _COMPUTATION.match(line) and "=" not in line.split("(")[0]:
            shapes = {}  # instruction names are local to a computation
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        name, shape, opcode, operands = instruction.groups()
        shapes[name] = shape
        if opcode not in COUNTED:
            continue
        operand = operands.split(",")[0].split()[-1].lstrip("%")
        if opcode == "broadcast" and re.fullmatch(r"\w+\[\](\{\})?", shapes.get(operand, "f32[]")):
            continue
        counts[opcode] += 1
    return counts


def measure(config: dict, shape) -> dict:
    from lambda_keras.models.complexity import lambda_layer_multiply_adds

    layer = LambdaLayer(**config)
    layer.build(shape)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    inputs = jax.ShapeDtypeStruct(tuple(shape), np.float32)

    def call(trainable, non_trainable, inputs):
        return layer.stateless_call(trainable, non_trainable, inputs, training=False)[0]

    compiled = jax.jit(call).lower(trainable, non_trainable, inputs).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {
        "counts": count_ops(compiled.as_text()),
        "flops": float(cost["flops"]),
        "bytes": float(cost["bytes accessed"]),
        "analytic_flops": 2 * shape[0] * lambda_layer_multiply_adds(layer, shape),
    }


def main(cases_path: str, output_path: str) -> None:
    assert keras.backend.backend() == "jax", keras.backend.backend()
    with open(cases_path, encoding="utf-8") as file:
        cases = json.load(file)
    results = {case_id: measure(case["config"], case["shape"]) for case_id, case in cases.items()}
    with open(output_path, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
