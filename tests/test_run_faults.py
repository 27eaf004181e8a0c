"""A training run never loses its own record: faults injected at controlled points.

Each test breaks a run the way a user or a machine would (a crash between two writes
of an epoch's end, a changed config, an unwritable export folder, a worker that never
starts, a checkpoint half-written) and checks what was kept on disk and what was said.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest
from run_control import free_ports
import tensorflow as tf

from training import callbacks as callbacks_lib
from training import config as config_lib
from training import experiment, folder_lock, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _short_run(digits_dir, model_dir, *overrides):
    # Conv blocks only: what is tested is the run's files, and a lambda layer's graph
    # takes longer to trace than the three short epochs take to train.
    return config_lib.load_config("demo", [
        "model.lambda_blocks=[[], [], [], []]",
        "train.epochs=3", "train.steps_per_epoch=3", "train.warmup_epochs=0", "train.validation_freq=10",
        "input.cache=false", *overrides,
    ], **{"input.data_dir": digits_dir, "model_dir": str(model_dir)})


class Crash(keras.callbacks.Callback):
    """Raises at the end of one epoch, where it sits in the callback list."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"crash at the end of epoch {epoch}")


def _logged_epochs(model_dir):
    with open(os.path.join(model_dir, "train_log.csv")) as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


@pytest.mark.parametrize("crash_point", ["before the log", "after the log", "after the backup"])
def test_log_and_backup_agree_after_a_crash_at_any_point_of_an_epoch_end(digits_dir, tmp_path, monkeypatch,
                                                                           crash_point):
    config = _short_run(digits_dir, tmp_path)
    strategy = tf.distribute.get_strategy()
    build_callbacks = experiment.build_callbacks

    def with_crash(*args):
        callbacks = build_callbacks(*args)
        kinds = [type(callback) for callback in callbacks]
        position = {
            "before the log": kinds.index(callbacks_lib.EpochLog),
            "after the log": kinds.index(callbacks_lib.EpochLog) + 1,
            "after the backup": kinds.index(keras.callbacks.BackupAndRestore) + 1,
        }[crash_point]
        return callbacks[:position] + [Crash(epoch=1)] + callbacks[position:]

    monkeypatch.setattr(experiment, "build_callbacks", with_crash)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(config, strategy)
    # The backup's "epoch" is the next epoch to run: every epoch before it has its row,
    # and the crashed epoch has its row only when the crash came after the log.
    next_epoch = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"]
    assert next_epoch == (2 if crash_point == "after the backup" else 1)
    assert _logged_epochs(tmp_path) == ([0] if crash_point == "before the log" else [0, 1])

    monkeypatch.setattr(experiment, "build_callbacks", build_callbacks)
    keras.backend.clear_session()
    _, results = experiment.run_experiment(config, strategy)
    assert results["start_epoch"] == next_epoch
    assert _logged_epochs(tmp_path) == [0, 1, 2]  # each epoch once, none lost


def test_a_changed_config_is_refused_before_anything_is_written(digits_dir, tmp_path, capsys):
    first = _short_run(digits_dir, tmp_path)
    tmp_path.joinpath("config.yaml").write_text(first.to_yaml())
    tmp_path.joinpath("train_log.csv").write_text("epoch,loss\n0,2.5\n")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    flags = ["--config", "demo", "--data_dir", digits_dir, "--model_dir", str(tmp_path),
             "--set", "train.epochs=3", "--set", "train.steps_per_epoch=3", "--set", "train.warmup_epochs=0",
             "--set", "input.cache=false", "--set", "train.validation_freq=10"]
    assert train.main(flags + ["--set", "train.epochs=4", "--set", "model.lambda_layer.scope_size=5"]) == 2
    error = capsys.readouterr().err
    assert "holds a run with another config" in error
    assert "model.lambda_layer.scope_size: 7 -> 5" in error and "train.epochs: 3 -> 4" in error
    # Nothing written but the (empty) lock file the run held the folder with.
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == {**before, ".lock": b""}
    # Where a run reads and executes may change: the same run resumes.
    experiment.check_same_run(_short_run(digits_dir, tmp_path, "runtime.strategy=auto"))


def test_a_second_run_into_a_model_dir_in_use_is_refused(digits_dir, tmp_path, capsys):
    with folder_lock.held_exclusively(str(tmp_path), "training run"):
        assert train.main(["--config", "demo", "--data_dir", digits_dir, "--model_dir", str(tmp_path)]) == 2
    assert f"{tmp_path} is in use by a training run (pid {os.getpid()})" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == [".lock"]  # the holder's run is untouched


def test_orphaned_temporary_checkpoints_are_removed_when_training_starts(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    orphan = checkpoints / f"{callbacks_lib.TEMPORARY_PREFIX}0123abcd.keras"
    orphan.write_bytes(b"half a model")
    kept = checkpoints / "last.keras"
    kept.write_bytes(b"the previous checkpoint")
    callbacks_lib.AtomicCheckpoint(str(kept)).on_train_begin()
    assert sorted(path.name for path in checkpoints.iterdir()) == ["last.keras"]
    assert kept.read_bytes() == b"the previous checkpoint"


def test_checkpoints_load_in_safe_mode_after_importing_only_lambda_keras(digits_dir, tmp_path):
    config = _short_run(digits_dir, tmp_path)
    model = experiment.build_and_compile(config, tf.distribute.get_strategy())
    path = tmp_path / "last.keras"
    callbacks_lib.save_atomically(model, str(path))
    script = (
        "import sys, keras, lambda_keras\n"
        "model = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "schedule = model.optimizer.get_config()['learning_rate']\n"
        "print(schedule['class_name'], type(model.loss).__name__, schedule['config']['total_steps'])\n"
        "assert 'training' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["WarmupCosineDecay", "SmoothedCrossEntropy", "9"]


def test_an_unwritable_export_dir_is_refused_before_training(digits_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    model_dir = tmp_path / "model"
    status = train.main(["--config", "demo", "--data_dir", digits_dir, "--model_dir", str(model_dir),
                         "--export_dir", str(blocker / "export")])
    assert status == 2
    error = capsys.readouterr().err
    assert f"--export_dir {blocker / 'export'} is not a writable folder" in error
    assert not model_dir.exists()  # no training happened


def _lone_worker(tmp_path, timeout_seconds):
    """The first worker of a two-worker TF_CONFIG whose second worker never starts."""
    ports = free_ports(2)
    tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": 0}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "training.train", "--config", "demo", "--strategy", "multiworker",
               "--model_dir", str(tmp_path / "model"), "--data_dir", str(tmp_path / "data"),
               "--set", f"runtime.worker_start_timeout_seconds={timeout_seconds}"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, f"localhost:{ports[1]}"


def test_a_worker_whose_peer_never_starts_stops_waiting_and_names_it(tmp_path):
    process, missing = _lone_worker(tmp_path, timeout_seconds=3)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert f"{missing} did not start within 3 s" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "model").exists()


def test_a_worker_waiting_for_its_peers_honours_sigterm(tmp_path):
    process, _ = _lone_worker(tmp_path, timeout_seconds=600)
    try:
        waiting = process.stdout.readline()
        while waiting and not waiting.startswith("Waiting up to"):
            waiting = process.stdout.readline()
        assert waiting.startswith("Waiting up to 600 s for the workers at")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=30)
        assert time.monotonic() - started < 10
        assert process.returncode == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
