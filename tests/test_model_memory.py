"""A run that does not fit in memory ends in one line: refused before any write when the
model's training state alone is too large (counted with shapes only), named when an
allocation fails while it runs.

The failing allocations here are real ones that fail at once (128 PiB and more, beyond
the address space, so that no allocator grants them lazily), so the tests use no memory.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.common import global_state

from lambda_keras import cli
from training import config as config_lib
from training import experiment, model_memory, train

BEYOND_ADDRESS_SPACE = 2**55  # elements: 128 PiB as float32, over x86-64's 57-bit addresses


def _demo_config(tmp_path, *overrides):
    return config_lib.load_config("demo", list(overrides), **{"input.data_dir": str(tmp_path / "data"),
                                                              "model_dir": str(tmp_path / "model")})


def _error_line(status, stderr) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("python -m training.train: error: ")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("overrides", [(), ("model.lambda_layer.key_dim=8", "input.num_classes=37")])
def test_training_state_counts_what_the_run_creates(tmp_path, overrides):
    """The shape-only count equals the built model's weights plus, per trainable weight, a
    gradient, a momentum slot and an EMA copy (the demo's SGD), all float32; and it leaves
    no variable behind for Keras to initialise later."""
    config = _demo_config(tmp_path, *overrides)
    pending = list(global_state.get_global_attribute("uninitialized_variables", []))
    parameters, state_bytes = model_memory.training_state(config)
    assert list(global_state.get_global_attribute("uninitialized_variables", [])) == pending

    model = experiment.build_model(config)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    everything = sum(int(np.prod(v.shape)) for v in model.weights)
    assert parameters == trainable == model.count_params() - sum(
        int(np.prod(v.shape)) for v in model.non_trainable_variables)
    assert config.train.momentum > 0 and config.train.use_ema
    assert state_bytes == 4 * (everything + 3 * trainable)

    model_memory.check_training_state_fits(config, memory_bytes=state_bytes)
    with pytest.raises(config_lib.ConfigError, match=f"{parameters:,} trainable parameters"):
        model_memory.check_training_state_fits(config, memory_bytes=state_bytes - 1)


TOO_LARGE = ("trainable parameters", "more than this machine's")


@pytest.mark.parametrize("overrides, expected", [
    (["model.lambda_layer.key_dim=100000000"], TOO_LARGE),  # a 64 x 4e8 query projection
    (["input.num_classes=2000000000"], TOO_LARGE),  # a classifier of 128 x 2e9
    (["input.image_size=16", "input.eval_crop_padding=0"],
     ("the model does not build at input.image_size=16", "Input size must be at least 32x32")),
], ids=["key-dim", "classes", "image-size"])
def test_a_model_too_large_or_not_buildable_is_refused_before_anything_is_written(tmp_path, capfd, overrides,
                                                                                  expected):
    data_dir, model_dir = tmp_path / "data", tmp_path / "model"
    flags = [flag for override in overrides for flag in ("--set", override)]
    status = train.main(["--config", "demo", "--data_dir", str(data_dir), "--model_dir", str(model_dir), *flags])
    line = _error_line(status, capfd.readouterr().err)
    assert all(fragment in line for fragment in expected), line
    # Not even the demo data, which the run would write first.
    assert not data_dir.exists() and not model_dir.exists()


def _raise(error_factory):
    try:
        error_factory()
    except Exception as error:  # noqa: BLE001 - the test keeps whatever the framework raised
        return error
    raise AssertionError("no error")


def test_out_of_memory_errors_of_every_framework_are_named_in_one_line():
    tf_error = _raise(lambda: tf.zeros([BEYOND_ADDRESS_SPACE]))
    numpy_error = _raise(lambda: np.empty(BEYOND_ADDRESS_SPACE))
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    jax_error = _raise(lambda: jnp.zeros(BEYOND_ADDRESS_SPACE).block_until_ready())

    def cleanup_fails_after_an_allocation():
        try:
            np.empty(BEYOND_ADDRESS_SPACE)
        except MemoryError:
            emptied_initializer = None  # what Keras's JAX fit meets on the variables it emptied
            emptied_initializer()

    chained = _raise(cleanup_fails_after_an_allocation)
    assert isinstance(chained, TypeError)

    messages = [cli.user_message(error) for error in (tf_error, numpy_error, jax_error, chained)]
    assert f"shape[{BEYOND_ADDRESS_SPACE}] and type float" in messages[0]
    numpy_shape = f"for an array with shape ({BEYOND_ADDRESS_SPACE},)"
    assert numpy_shape in messages[1] and numpy_shape in messages[3]
    assert f"allocating {4 * BEYOND_ADDRESS_SPACE} bytes" in messages[2]
    for message in messages:
        assert message.startswith("out of memory (") and "\n" not in message and "node" not in message
    assert cli.out_of_memory_detail(ValueError("RESOURCE_EXHAUSTED: not from XLA")) is None
    assert cli.out_of_memory_detail(_raise(lambda: tf.zeros([-1]))) is None


def test_running_out_of_memory_while_training_ends_in_one_line_naming_the_batch(tmp_path, capfd, monkeypatch):
    """TensorFlow's out-of-memory error where the run raises it (inside `run_experiment`)."""
    allocation = _raise(lambda: tf.zeros([BEYOND_ADDRESS_SPACE, 3]))

    def run_out_of_memory(config, strategy):
        raise allocation

    monkeypatch.setattr(experiment, "run_experiment", run_out_of_memory)
    status = train.main(["--config", "demo", "--data_dir", str(tmp_path / "data"), "--model_dir",
                         str(tmp_path / "model"), "--set", "input.global_batch_size=32"])
    line = _error_line(status, capfd.readouterr().err)
    assert f"Out of memory (OOM when allocating tensor with shape[{BEYOND_ADDRESS_SPACE},3]" in line
    assert "input.global_batch_size=32, input.image_size=32" in line


def test_keras_builds_normally_after_a_count(tmp_path):
    """The counted variables never get values: the next shape computation (which ends an
    ordinary StatelessScope) initialises nothing of them, and a real model still trains."""
    # A query projection of 64 x 2**52: were it ever allocated, the allocation would fail
    # at once (beyond the address space) instead of filling the memory.
    config = _demo_config(tmp_path, f"model.lambda_layer.key_dim={2**50}")
    parameters, _ = model_memory.training_state(config)
    assert parameters > 2**58
    layer = keras.layers.Dense(3)
    assert layer.compute_output_spec(keras.KerasTensor((2, 4))).shape == (2, 3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(np.ones((8, 4)), np.zeros((8, 1)), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
