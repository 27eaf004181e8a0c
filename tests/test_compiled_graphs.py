"""Bounds on the data movement in the lambda layer's compiled graphs, on the CPU.

For each implementation: the transposes, copies and broadcasts of its ``jax.jit``
inference graph as XLA's CPU backend optimises it (one JAX worker process,
tests/compiled_graph_worker.py, for all cases) with XLA's FLOP count against the
analytic one, and the ``Transpose``, ``BroadcastTo``/``Tile`` and ``Identity`` nodes of
its TensorFlow graph, for both lambda convolution forms. A change that adds one shows
here without a GPU; docs/design.md ("Lean compiled graphs") records where each comes
from. The counts do not depend on the CPU: XLA's optimised HLO does not depend on
oneDNN, and the TensorFlow graph is counted as traced, before Grappler.
"""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from lambda_keras import LambdaLayer
from lambda_keras.layers import lambda_layer

WORKER = Path(__file__).with_name("compiled_graph_worker.py")
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the TensorFlow run also starts the JAX worker"
)

PAPER = {"key_dim": 16, "num_heads": 4, "intra_depth": 1}
IMAGE, GLOBAL_IMAGE, SEQUENCE = (2, 10, 10, 32), (2, 6, 6, 32), (2, 16, 32)

# case -> (layer arguments, input shape, XLA (transposes, copies, broadcasts), XLA FLOPs /
# analytic FLOPs, TensorFlow (Transpose, BroadcastTo + Tile, Identity + IdentityN) per
# convolution form, None where the form does not apply). The global convolution is the
# local one's graph with a larger table: TensorFlow only, to keep the worker short.
CASES = {
    "image-einsum": ({"scope_size": 7, "implementation": "einsum"}, IMAGE, (3, 6, 13), 1.830,
                     {None: (0, 0, 1)}),
    "image-conv": ({"scope_size": 7, "implementation": "conv"}, IMAGE, (1, 1, 8), 1.082,
                   {"dilated": (1, 0, 3), "folded": (4, 0, 3)}),
    "image-banded": ({"scope_size": 7, "implementation": "banded"}, IMAGE, (6, 10, 11), 1.693,
                     {None: (1, 0, 1)}),
    "global-einsum": ({"scope_size": None, "implementation": "einsum"}, GLOBAL_IMAGE, (3, 6, 13), 0.921,
                      {None: (0, 0, 1)}),
    "global-conv": ({"scope_size": None, "implementation": "conv"}, GLOBAL_IMAGE, None, None,
                    {"dilated": (1, 0, 3), "folded": (4, 0, 3)}),
    "sequence-einsum": ({"scope_size": 7, "implementation": "einsum"}, SEQUENCE, (3, 8, 9), 1.252,
                        {None: (0, 0, 1)}),
    "sequence-conv": ({"scope_size": 7, "implementation": "conv"}, SEQUENCE, (1, 3, 8), 1.158,
                      {"dilated": (1, 0, 3), "folded": (4, 0, 3)}),
}
# XLA's FLOP count may move this much either way between XLA versions.
FLOP_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def xla_graphs(tmp_path_factory) -> dict:
    """case -> the JAX worker's counts and costs, one worker process for all cases."""
    folder = tmp_path_factory.mktemp("compiled_graphs")
    cases = {case: {"config": {**PAPER, **config}, "shape": shape}
             for case, (config, shape, xla, *_) in CASES.items() if xla is not None}
    (folder / "cases.json").write_text(json.dumps(cases))
    # The platform runs' XLA settings (a lower optimisation level) would change the graph.
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS")}
    environment.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(WORKER), folder / "cases.json", folder / "out.json"],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"JAX worker failed:\n{result.stderr[-3000:]}"
    return json.loads((folder / "out.json").read_text())


def test_xla_cpu_graphs_move_no_more_data_than_measured(xla_graphs):
    """One test for all cases (each test's teardown clears the Keras session, which
    takes longer than a case)."""
    failures = []
    for case, measured in xla_graphs.items():
        bounds = dict(zip(("transpose", "copy", "broadcast"), CASES[case][2]))
        if any(measured["counts"][op] > bound for op, bound in bounds.items()):
            failures.append(f"{case}: {measured['counts']} exceeds {bounds}")
        ratio = measured["flops"] / measured["analytic_flops"]
        if ratio != pytest.approx(CASES[case][3], rel=FLOP_TOLERANCE):
            failures.append(f"{case}: XLA FLOPs / analytic {ratio:.3f}, measured {CASES[case][3]}")
    assert not failures, "\n".join(failures)


def tensorflow_graph_counts(config: dict, shape: tuple) -> tuple:
    import tensorflow as tf

    layer = LambdaLayer(**PAPER, **config)
    layer.build(shape)
    call = tf.function(lambda inputs: layer(inputs, training=False))
    graph = call.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph.as_graph_def()
    ops = collections.Counter(node.op for node in graph.node)
    ops.update(node.op for function in graph.library.function for node in function.node_def)
    return ops["Transpose"], ops["BroadcastTo"] + ops["Tile"], ops["Identity"] + ops["IdentityN"]


def test_tensorflow_graphs_have_the_measured_transposes(monkeypatch):
    failures = []
    for case, (config, shape, _, _, expected) in CASES.items():
        for form, counts in expected.items():
            if form is not None:  # both forms, whichever this CPU's oneDNN setting runs
                monkeypatch.setattr(lambda_layer, "_convolution_form", lambda form=form: form)
            measured = tensorflow_graph_counts(config, shape)
            if measured != counts:
                failures.append(f"{case} ({form or 'no convolution'}): {measured}, measured {counts}")
    assert not failures, "\n".join(failures)
