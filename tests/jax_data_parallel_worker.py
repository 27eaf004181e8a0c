"""The demo model under Keras's JAX backend on one CPU device and on two, in one process.

Run by tests/test_train_jax.py in a fresh process (KERAS_BACKEND=jax, XLA_FLAGS asking
for two host devices):

    python tests/jax_data_parallel_worker.py DATA_DIR MODEL_DIR OUTPUT STEPS

It trains, then evaluates (in MODEL_DIR_train and MODEL_DIR_evaluate), each twice: first
with `training.strategies.create_strategy("cpu")` seeing only the first device (a
JaxDataParallel of one replica and no distribution, as in a process with one device),
then seeing both (keras.distribution.DataParallel over two). One process for both device
counts and both checks: Keras, TensorFlow and JAX are imported once.

The training trains STEPS steps and writes OUTPUT_1.npz and OUTPUT_2.npz, each with the
replica count, the per-step losses, which weights are trainable, their paths and the
weights before and after. The evaluation then prints "REPLICAS TOP1" per run, one line
each, for the validation split.
"""

import contextlib
import sys
from unittest import mock

import jax
import keras
import numpy as np

from training import config as config_lib
from training import experiment, strategies

DEVICE_COUNTS = (1, 2)


@contextlib.contextmanager
def devices_seen(count: int):
    """JAX lists only its first `count` devices while the strategy is created."""
    all_devices = jax.devices
    with mock.patch.object(jax, "devices", lambda *args, **kwargs: all_devices(*args, **kwargs)[:count]):
        yield


def create_strategy(devices: int) -> strategies.Strategy:
    keras.backend.clear_session()
    with devices_seen(devices):
        strategy = strategies.create_strategy("cpu")
    assert strategy.num_replicas_in_sync == devices
    keras.utils.set_random_seed(0)
    return strategy


def train(data_dir: str, model_dir: str, output: str, steps: int) -> None:
    # Deterministic input (full-image crops, fixed order), the learning rate at its
    # peak from the first step, and no EMA: the weights after the steps are the SGD
    # iterates themselves.
    config = config_lib.load_config("demo", [
        "train.warmup_epochs=0", "train.epochs=1", "train.base_learning_rate=0.02", "train.ema_decay=null",
        "input.crop_area_range=[1, 1]", "input.crop_aspect_ratio_range=[1, 1]", "input.deterministic_train=true",
    ], **{"input.data_dir": data_dir, "model_dir": model_dir})
    for devices in DEVICE_COUNTS:
        strategy = create_strategy(devices)
        train_data, _, _, _ = experiment.build_datasets(config, strategy)
        model = experiment.build_and_compile(config, strategy)
        initial = model.get_weights()
        losses = []
        record_loss = keras.callbacks.LambdaCallback(on_train_batch_end=lambda _, logs: losses.append(logs["loss"]))
        model.fit(train_data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[record_loss])
        trainable = np.array([weight.trainable for weight in model.weights])
        np.savez(f"{output}_{devices}.npz", replicas=strategy.num_replicas_in_sync,
                 losses=np.array(losses, np.float64), trainable=trainable,
                 paths=np.array([weight.path for weight in model.weights]),
                 **{f"initial_{i}": w for i, w in enumerate(initial)},
                 **{f"final_{i}": w for i, w in enumerate(model.get_weights())})


def evaluate(data_dir: str, model_dir: str) -> None:
    config = config_lib.load_config(
        "demo", ["model.lambda_blocks=[[], [], [], []]", "input.eval_global_batch_size=66"],
        **{"input.data_dir": data_dir, "model_dir": model_dir})
    for devices in DEVICE_COUNTS:
        strategy = create_strategy(devices)
        _, validation, _, _ = experiment.build_datasets(config, strategy)
        model = experiment.build_and_compile(config, strategy)
        print(strategy.num_replicas_in_sync, repr(model.evaluate(validation, return_dict=True, verbose=0)["top1"]),
              flush=True)


if __name__ == "__main__":
    train(sys.argv[1], sys.argv[2] + "_train", sys.argv[3], int(sys.argv[4]))
    evaluate(sys.argv[1], sys.argv[2] + "_evaluate")
