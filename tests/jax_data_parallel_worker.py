"""Trains the demo model a few steps under Keras's JAX backend on every CPU device.

Run by tests/test_train_jax.py in a fresh process (KERAS_BACKEND=jax, and XLA_FLAGS
asking for one or two host devices):

    python tests/jax_data_parallel_worker.py DATA_DIR MODEL_DIR OUTPUT.npz STEPS

Writes the replica count, the per-step losses, which weights are trainable and the
weights before and after.
"""

import sys

import keras
import numpy as np

from training import config as config_lib
from training import experiment, strategies


def main(data_dir: str, model_dir: str, output: str, steps: int) -> None:
    # Deterministic input (full-image crops, fixed order), the learning rate at its
    # peak from the first step, and no EMA: the weights after the steps are the SGD
    # iterates themselves.
    config = config_lib.load_config("demo", [
        "train.warmup_epochs=0", "train.epochs=1", "train.base_learning_rate=0.02", "train.ema_decay=null",
        "input.crop_area_range=[1, 1]", "input.crop_aspect_ratio_range=[1, 1]", "input.deterministic_train=true",
    ], **{"input.data_dir": data_dir, "model_dir": model_dir})
    strategy = strategies.create_strategy("cpu")
    keras.utils.set_random_seed(0)
    train_data, _, _, _ = experiment.build_datasets(config, strategy)
    model = experiment.build_and_compile(config, strategy)
    initial = model.get_weights()
    losses = []
    record_loss = keras.callbacks.LambdaCallback(on_train_batch_end=lambda _, logs: losses.append(logs["loss"]))
    model.fit(train_data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[record_loss])
    trainable = np.array([weight.trainable for weight in model.weights])
    np.savez(output, replicas=strategy.num_replicas_in_sync, losses=np.array(losses, np.float64), trainable=trainable,
             **{f"initial_{i}": w for i, w in enumerate(initial)},
             **{f"final_{i}": w for i, w in enumerate(model.get_weights())})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
