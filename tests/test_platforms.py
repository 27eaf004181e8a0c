"""The layer and model tests on the platforms this process is not: TensorFlow with
oneDNN forced on and off, and Keras's JAX and PyTorch backends.

Each run is a pytest of its own in a fresh process, since both settings are fixed
when TensorFlow (or Keras) is imported. Every run leaves out the tests marked structural
(layer names, argument checks: the same on every platform); the JAX and PyTorch runs
also leave out those marked slow (the full-size ResNet-50 train steps, 30 s each under
JAX; the demo training under JAX, tests/test_train_jax.py, compiles a LambdaResNet's
train step there). The JAX run also runs KerasHub's harness on lambda_keras.hub
(tests/test_hub_harness.py).
``python -m pytest`` thereby proves every platform in one command; a failure shows the
inner run's report.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from lambda_keras.layers import kernel_support

TESTS = Path(__file__).resolve().parent
LAYER_AND_MODEL_TESTS = ["test_lambda_layer.py", "test_models.py", "test_mobilenet_v2.py"]
# KerasHub's own model-test harness on lambda_keras.hub (skips itself without KerasHub):
# in the JAX run, where the classifier's preprocessing meets tf.data under another
# backend. Under PyTorch on CPU the harness skips its precision and quantization checks;
# it passes there too (run by hand, see the file), left out to keep CI short.
HUB_HARNESS_TESTS = ["test_hub_harness.py"]

# A hang, not a busy machine: beside another suite one inner run got a quarter of a core
# and its 300 CPU-seconds took over 20 minutes. CI's own limit is 90 minutes.
INNER_RUN_TIMEOUT_SECONDS = 2700

# Under JAX, compiling each eagerly run operation is most of the run's time (at the
# lowest optimisation level that tests/conftest.py sets for every JAX process). A single
# process gains less from the persistent cache than its writes cost (docs/design.md,
# "The test suite's time").
BACKEND_SETTINGS = {"jax": {"JAX_ENABLE_COMPILATION_CACHE": "false"}}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow" or os.environ.get("LAMBDA_KERAS_INNER_RUN") == "1",
        reason="the outer TensorFlow run starts the platform runs",
    ),
]


def run_pytest(environment: dict, test_files: list[str], *options: str) -> None:
    # One process (-n 0): beside the outer run's two workers, inner workers would only
    # import TensorFlow and the backend again and compile the same operations twice.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *options,
               *(str(TESTS / f) for f in test_files)]
    result = subprocess.run(
        command, cwd=TESTS.parent, capture_output=True, text=True, timeout=INNER_RUN_TIMEOUT_SECONDS,
        env={**os.environ, **environment, "LAMBDA_KERAS_INNER_RUN": "1"},
    )
    summary = result.stdout.strip().splitlines()[-1:] if result.stdout.strip() else ["no output"]
    print(f"{environment}: {summary[0]}")
    assert result.returncode == 0, f"{environment}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("onednn", ["0", "1"], ids=["onednn-off", "onednn-on"])
def test_layer_and_models_with_onednn(onednn):
    """TensorFlow CPU with oneDNN off (the default on CPUs without AVX-512) and on."""
    # The dilated kernel exists exactly when oneDNN is on (lambda_keras.layers.kernel_support).
    this_run = "1" if kernel_support.has_dilated_transposed_convolution() else "0"
    if onednn == this_run:
        pytest.skip(f"this run itself has oneDNN {'on' if onednn == '1' else 'off'}")
    run_pytest({"TF_ENABLE_ONEDNN_OPTS": onednn, "KERAS_BACKEND": "tensorflow"}, LAYER_AND_MODEL_TESTS,
               "-m", "not structural")


# Under JAX the files run in three processes (each compiles its own operations), so that
# the two outer workers share the longest platform run instead of one worker waiting on it.
BACKEND_RUNS = [
    pytest.param("jax", ["test_lambda_layer.py"], id="jax-layer"),
    pytest.param("jax", ["test_models.py", "test_mobilenet_v2.py"], id="jax-models"),
    pytest.param("jax", HUB_HARNESS_TESTS, id="jax-hub-harness"),
    pytest.param("torch", LAYER_AND_MODEL_TESTS, id="torch"),
]


@pytest.mark.parametrize("backend,test_files", BACKEND_RUNS)
def test_layer_and_models_under_backend(backend, test_files):
    """NumPy-reference, gradient, pooling, model build/predict/step and fit tests."""
    run_pytest({"KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", **BACKEND_SETTINGS.get(backend, {})},
               test_files, "-m", "not slow and not structural")
