"""The same layer and model under Keras's JAX and PyTorch backends as under TensorFlow.

Each other backend runs in one process of its own (tests/backend_worker.py) for all the
cases: outputs and gradients of a lambda layer with the same weights, and ``.keras``
files saved under one backend predicting the same under another.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from backend_gradients import loss_gradients
from backend_worker import small_model

from lambda_keras import LambdaLayer

WORKER = Path(__file__).with_name("backend_worker.py")
OTHER_BACKENDS = ["jax", "torch"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="compares other backends with TensorFlow"),
]


def run_worker(backend: str, *arguments) -> None:
    environment = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, str(WORKER), *map(str, arguments)], env=environment, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{backend} worker failed:\n{result.stderr[-3000:]}"


LAYER_CASES = [
    pytest.param({"key_dim": 4, "num_heads": 2, "intra_depth": 2, "scope_size": 5, "implementation": "conv"},
                 (2, 6, 8, 8), id="image-conv-u2"),
    pytest.param({"key_dim": 4, "num_heads": 2, "scope_size": 5, "implementation": "banded", "strides": 2},
                 (2, 6, 8, 8), id="image-banded-strided-even"),
    pytest.param({"key_dim": 4, "num_heads": 2, "scope_size": None, "implementation": "einsum"},
                 (2, 4, 5, 8), id="image-global-einsum"),
    pytest.param({"key_dim": 4, "num_heads": 2, "scope_size": 5, "causal": True, "implementation": "conv"},
                 (2, 9, 8), id="sequence-causal-conv"),
]


@pytest.fixture(scope="module")
def layer_cases(tmp_path_factory) -> dict:
    """Case id -> (layer with random weights, inputs, its case file). A test's training
    call moves the layer's batch-norm statistics: ``fresh_layer`` gives one as written."""
    folder = tmp_path_factory.mktemp("layer_cases")
    cases = {}
    for case in LAYER_CASES:
        config, shape = case.values
        layer = LambdaLayer(**config)
        layer.build(shape)
        rng = np.random.default_rng(0)
        for weight in layer.weights:
            value = rng.normal(0.0, 0.3, weight.shape)
            weight.assign((np.abs(value) + 0.5 if "variance" in weight.path else value).astype("float32"))
        inputs = rng.normal(size=shape).astype("float32")
        case_file = folder / f"{case.id}.npz"
        np.savez(case_file, inputs=inputs, config=json.dumps(layer.get_config()),
                 **{f"weight_{i}": w for i, w in enumerate(layer.get_weights())})
        cases[case.id] = (layer, inputs, case_file)
    return cases


def fresh_layer(layer: LambdaLayer, input_shape: tuple) -> LambdaLayer:
    """A copy of ``layer`` with its weights, built anew."""
    copy = LambdaLayer.from_config(layer.get_config())
    copy.build(input_shape)
    copy.set_weights(layer.get_weights())
    return copy


@pytest.fixture(scope="module")
def worker_results(layer_cases, tmp_path_factory):
    """backend -> that backend's answers, from one worker process per backend: each layer
    case's outputs and gradients (``"gradients"``: case id -> arrays) and the ``.keras``
    exchange (``"exchange"``: the folder of its files, its images and the TensorFlow model)."""
    results: dict[str, dict] = {}

    def of(backend: str) -> dict:
        if backend not in results:
            folder = tmp_path_factory.mktemp(f"worker_{backend}")
            outputs = {case_id: folder / f"{case_id}.npz" for case_id in layer_cases}
            images = np.random.default_rng(1).uniform(-1, 1, (2, 40, 40, 3)).astype("float32")
            np.savez(folder / "images.npz", images=images)
            ours = small_model()
            ours.save(folder / "tensorflow.keras")
            run_worker(backend, "gradients",
                       *(path for case_id, (_, _, case_file) in layer_cases.items()
                         for path in (case_file, outputs[case_id])),
                       "exchange", folder / "tensorflow.keras", folder / "images.npz",
                       folder / f"{backend}.keras", folder / "out.npz")
            results[backend] = {"gradients": {case_id: np.load(path) for case_id, path in outputs.items()},
                                "exchange": (folder, images, ours)}
        return results[backend]

    return of


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("case_id", [case.id for case in LAYER_CASES])
def test_layer_outputs_and_gradients_match_tensorflow(backend, case_id, layer_cases, worker_results):
    layer, inputs, _ = layer_cases[case_id]
    layer = fresh_layer(layer, inputs.shape)
    theirs = worker_results(backend)["gradients"][case_id]
    np.testing.assert_allclose(theirs["outputs"], keras.ops.convert_to_numpy(layer(inputs)), atol=1e-5, rtol=1e-5)
    names = ["inputs"] + [w.path for w in layer.trainable_weights]
    for index, (name, ours) in enumerate(zip(names, loss_gradients(layer, inputs))):
        np.testing.assert_allclose(theirs[f"gradient_{index}"], ours, atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_keras_files_predict_the_same_under_tensorflow_and_another_backend(backend, worker_results):
    """A .keras file saved here (TensorFlow) predicts the same under ``backend``, and one
    that ``backend`` saved predicts here what it predicted there."""
    folder, images, ours = worker_results(backend)["exchange"]
    out = np.load(folder / "out.npz")
    expected = keras.ops.convert_to_numpy(ours(images, training=False))
    assert np.abs(expected).max() > 0.1  # logits of a random model, not all zeros
    np.testing.assert_allclose(out["theirs"], expected, atol=1e-4, rtol=1e-4)
    theirs = keras.saving.load_model(folder / f"{backend}.keras", safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(theirs(images, training=False)), out["ours"],
                               atol=1e-4, rtol=1e-4)
