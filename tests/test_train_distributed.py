"""Distributed training on CPU: MirroredStrategy parity and two-worker MWMS.

MirroredStrategy runs over the two logical CPU devices of tests/conftest.py; the
MultiWorkerMirroredStrategy test starts two worker processes talking over
127.0.0.1 with a TF_CONFIG each, as on real hosts.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from run_control import free_ports
import tensorflow as tf

from training import config as config_lib, experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_step(config, strategy, initial_weights):
    """(loss of the first step, weights after it) under `strategy`."""
    keras.utils.set_random_seed(0)  # The same shuffle order for every run.
    train_data, _, _, _ = experiment.build_datasets(config, strategy)
    model = experiment.build_and_compile(config, strategy)
    model.set_weights(initial_weights)
    history = model.fit(train_data, epochs=1, steps_per_epoch=1, verbose=0)
    return history.history["loss"][0], model.get_weights()


def test_mirrored_two_replicas_match_one_device(digits_dir, tmp_path):
    # Deterministic input (full-image crops, fixed order) and the learning rate at
    # its peak from step 0, so that one step changes the weights. The peak is half the
    # demo's (0.025): SyncBN's one-pass variance E[x^2] - E[x]^2 differs from the
    # single device's two-pass one by float32 rounding, which a few stem channels
    # with nearly constant inputs (black digit backgrounds) amplify into gradient
    # differences of ~3e-3; at the demo's 0.05 those reach 1.4e-4 in 6 of 864 stem
    # kernel entries.
    config = config_lib.load_config("demo", [
        "train.warmup_epochs=0", "train.epochs=1", "train.base_learning_rate=0.1",
        "input.crop_area_range=[1, 1]", "input.crop_aspect_ratio_range=[1, 1]",
        "input.deterministic_train=true",
    ], **{"input.data_dir": digits_dir, "model_dir": str(tmp_path)})
    initial = experiment.build_model(config).get_weights()

    # The one-device run is MirroredStrategy over CPU:0, so that both take Keras'
    # strategy code path: under a strategy, fit first draws a batch from a separate
    # iterator to build the model symbolically, which advances the seeded shuffle
    # differently from the no-strategy path.
    one_device = tf.distribute.MirroredStrategy(["CPU:0"])
    mirrored = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    assert mirrored.num_replicas_in_sync == 2
    loss_1, weights_1 = _first_step(config, one_device, initial)
    keras.backend.clear_session()
    loss_2, weights_2 = _first_step(config, mirrored, initial)

    assert loss_1 > 1.0  # A real cross entropy over 10 classes, not a degenerate value.
    assert loss_2 == pytest.approx(loss_1, abs=1e-4)
    changed = 0
    for before, w1, w2 in zip(initial, weights_1, weights_2):
        np.testing.assert_allclose(w2, w1, atol=1e-4, rtol=0)
        changed += not np.allclose(w1, before)
    assert changed > len(initial) // 2  # The step moved most weights.


WORKER = r"""
import json, os, sys
import numpy as np
from training import config as config_lib, experiment, strategies

data_dir, model_dir = sys.argv[1], sys.argv[2]
strategy = strategies.create_strategy("multiworker")
config = config_lib.load_config(
    "demo", sys.argv[3:], **{"input.data_dir": data_dir, "model_dir": model_dir})
model, results = experiment.run_experiment(config, strategy)
index = strategies.worker_index(strategy)
np.savez(os.path.join(model_dir, f"weights_{index}.npz"), *model.get_weights())
with open(os.path.join(model_dir, f"results_{index}.json"), "w") as file:
    json.dump({**results, "replicas": strategy.num_replicas_in_sync,
               "chief": strategies.is_chief(strategy)}, file)
"""


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_end_with_the_same_weights(digits_dir, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    # Validation batches of 37 per worker: worker 0 reads 149 digits (5 steps), worker 1
    # 148 (4 steps); padded, both run 5 steps, worker 1's last batch all padding. Conv
    # blocks only: what is tested is the workers' agreement, not the model (the lambda
    # layers' synchronized batch norm is checked against one device in the Mirrored test).
    overrides = ["model.lambda_blocks=[[], [], [], []]", "train.epochs=1", "train.steps_per_epoch=3",
                 "train.warmup_epochs=0", "input.eval_global_batch_size=74"]
    workers = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, digits_dir, str(tmp_path), *overrides],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=300)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]

    results = [json.loads((tmp_path / f"results_{i}.json").read_text()) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["chief"] for r in results] == [True, False]
    assert [r["final_step"] for r in results] == [3, 3]
    assert results[0]["top1"] == pytest.approx(results[1]["top1"])
    weights = [np.load(tmp_path / f"weights_{i}.npz") for i in range(2)]
    assert len(weights[0].files) == len(weights[1].files) > 100
    for key in weights[0].files:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    config = config_lib.load_config("demo", overrides, **{"input.data_dir": digits_dir,
                                                           "model_dir": str(tmp_path / "one_device")})
    one_device = _top1(config, tf.distribute.get_strategy(), [weights[0][key] for key in weights[0].files])
    assert results[0]["top1"] == pytest.approx(one_device, abs=1e-6)
    # Only the chief writes checkpoints and logs; each worker keeps a backup.
    assert (tmp_path / "checkpoints" / "last.keras").exists()
    assert (tmp_path / "train_log.csv").exists()
    assert (tmp_path / "backup" / "worker_1" / "training_metadata.json").exists()


def _top1(config, strategy, weights):
    """Validation top-1 of `weights` under `strategy`, as the trainer evaluates."""
    _, validation, _, _ = experiment.build_datasets(config, strategy)
    model = experiment.build_and_compile(config, strategy)
    model.set_weights(weights)
    return model.evaluate(validation, return_dict=True, verbose=0)["top1"]


def _conv_demo(digits_dir, model_dir, *overrides):
    return config_lib.load_config("demo", ["model.lambda_blocks=[[], [], [], []]", *overrides],
                                  **{"input.data_dir": digits_dir, "model_dir": str(model_dir)})


@pytest.fixture(scope="module")
def one_device_reference(digits_dir, tmp_path_factory):
    """Random weights of the conv-only demo and their validation top-1 on one device,
    shared by the validation cases (one device counts the same whatever the batch)."""
    keras.utils.set_random_seed(0)
    config = _conv_demo(digits_dir, tmp_path_factory.mktemp("one_device"))
    weights = experiment.build_model(config).get_weights()
    top1 = _top1(config, tf.distribute.get_strategy(), weights)
    keras.backend.clear_session()
    return weights, top1


@pytest.mark.parametrize("eval_batch", [66, 64])
def test_mirrored_validation_with_an_empty_or_short_replica_batch_counts_every_example_once(one_device_reference,
                                                                                            digits_dir, tmp_path,
                                                                                            eval_batch):
    # 297 validation digits in batches of 33 per replica: 9 batches, so the last step
    # gives replica 1 no example; of 32: the last step gives replica 1 9 examples.
    config = _conv_demo(digits_dir, tmp_path, f"input.eval_global_batch_size={eval_batch}")
    weights, one_device = one_device_reference
    mirrored = _top1(config, tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"]), weights)
    assert 0 < one_device < 1
    assert mirrored == one_device  # the same correct count over the same 297 examples
    assert round(mirrored * 297) == pytest.approx(mirrored * 297, abs=1e-3)
