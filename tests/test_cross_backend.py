"""The same layer and model under Keras's JAX and PyTorch backends as under TensorFlow.

Each other backend runs in a process of its own (tests/backend_worker.py): outputs and
gradients of a lambda layer with the same weights, and ``.keras`` files saved under one
backend predicting the same under another.
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


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("config, shape", LAYER_CASES)
def test_layer_outputs_and_gradients_match_tensorflow(backend, config, shape, tmp_path):
    layer = LambdaLayer(**config)
    layer.build(shape)
    rng = np.random.default_rng(0)
    for weight in layer.weights:
        value = rng.normal(0.0, 0.3, weight.shape)
        weight.assign((np.abs(value) + 0.5 if "variance" in weight.path else value).astype("float32"))
    inputs = rng.normal(size=shape).astype("float32")
    case = tmp_path / "case.npz"
    np.savez(case, inputs=inputs, config=json.dumps(layer.get_config()),
             **{f"weight_{i}": w for i, w in enumerate(layer.get_weights())})
    run_worker(backend, "gradients", case, tmp_path / "out.npz")
    theirs = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(theirs["outputs"], keras.ops.convert_to_numpy(layer(inputs)), atol=1e-5, rtol=1e-5)
    names = ["inputs"] + [w.path for w in layer.trainable_weights]
    for index, (name, ours) in enumerate(zip(names, loss_gradients(layer, inputs))):
        np.testing.assert_allclose(theirs[f"gradient_{index}"], ours, atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, images=np.random.default_rng(1).uniform(-1, 1, (2, 40, 40, 3)).astype("float32"))
    return path


@pytest.mark.parametrize("saver, loader", [("tensorflow", "jax"), ("tensorflow", "torch"),
                                           ("jax", "tensorflow"), ("torch", "tensorflow")])
def test_keras_file_predicts_the_same_under_another_backend(saver, loader, images, tmp_path):
    model_path = tmp_path / "small.keras"
    run_worker(saver, "save", model_path, images, tmp_path / "saved.npz")
    run_worker(loader, "predict", model_path, images, tmp_path / "loaded.npz")
    saved, loaded = np.load(tmp_path / "saved.npz")["predictions"], np.load(tmp_path / "loaded.npz")["predictions"]
    assert np.abs(saved).max() > 0.1  # logits of a random model, not all zeros
    np.testing.assert_allclose(loaded, saved, atol=1e-4, rtol=1e-4)
