"""A training run never loses its own record: faults injected at controlled points.

Each test breaks a run the way a user or a machine would (a crash between two writes
of an epoch's end, a changed config, an unwritable export folder, a worker that never
starts, a checkpoint half-written) and checks what was kept on disk and what was said.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from run_control import free_ports
import tensorflow as tf

from lambda_keras import atomic_files, cli
from lambda_keras.data import manifest, records
from training import callbacks as callbacks_lib
from training import config as config_lib
from training import errors, experiment, folder_lock, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What is tested is the run's files and messages, not the model: conv blocks only (a
# lambda layer's graph takes longer to trace than the three short epochs take to train)
# on the vanilla base (its 7x7 stem and 1x1 projection shortcuts are fewer layers to
# trace than the ResNet-D ones, and fewer variables to save at every epoch's end).
SMALL_MODEL = ["model.lambda_blocks=[[], [], [], []]", "model.base=vanilla"]
SMALL_MODEL_FLAGS = [flag for override in SMALL_MODEL for flag in ("--set", override)]


def _short_run(digits_dir, model_dir, *overrides):
    return config_lib.load_config("demo", [
        *SMALL_MODEL,
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
    config = _short_run(digits_dir, tmp_path, "train.steps_per_epoch=1")  # what is tested happens at epoch ends
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
    # Keras calls train_step once per trace of the train function.
    traces = []
    train_step = keras.Model.train_step
    monkeypatch.setattr(keras.Model, "train_step", lambda model, data: traces.append(1) or train_step(model, data))
    with pytest.raises(KeyboardInterrupt):
        experiment.run_experiment(config, strategy)
    assert len(traces) == 1  # a fresh run traces its train step once (build_and_compile builds the optimizer)
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
    assert len(traces) == 2  # and so does the resumed run


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


@pytest.mark.parametrize("recorded", [b"keep", b"[1, 2]", b"\xff\xfe\x00binary", b"model: 5",
                                      b"a: &a [1, 1]\nb: &b [*a, *a]\ntrain: {epochs: [*b, *b]}\n"],
                         ids=["scalar", "list", "not-utf8", "bad-section", "aliases"])
def test_a_model_dir_whose_config_yaml_is_not_a_config_is_refused_in_one_line(tmp_path, recorded):
    """A folder that holds progress and a config.yaml this version cannot read as a config
    (a user's own file, another tool's): refused by name, nothing changed."""
    tmp_path.joinpath("config.yaml").write_bytes(recorded)
    tmp_path.joinpath("train_log.csv").write_text("epoch,loss\n0,2.5\n")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(config_lib.ConfigError, match="holds a run whose config this version cannot read") as error:
        experiment.check_same_run(_short_run("/unused", tmp_path))
    assert "\n" not in cli.user_message(error.value)  # what the command prints
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.parametrize("foreign", ["backup/notes.txt", "checkpoints/last.keras", "train_log.csv"])
def test_progress_without_a_config_yaml_is_refused_unless_another_worker_reads_it(tmp_path, foreign):
    """A folder of the user's own (or a run whose config.yaml was deleted): the chief would
    resume from or overwrite files no run of this config wrote. Nothing changes."""
    tmp_path.joinpath(foreign).parent.mkdir(parents=True, exist_ok=True)
    tmp_path.joinpath(foreign).write_text("the user's own")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(config_lib.ConfigError, match="but no config.yaml"):
        experiment.check_same_run(_short_run("/unused", tmp_path))
    experiment.check_same_run(_short_run("/unused", tmp_path), chief=False)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_a_second_run_into_a_model_dir_in_use_is_refused(digits_dir, tmp_path, capsys):
    with folder_lock.held_exclusively(str(tmp_path), "training run"):
        assert train.main(["--config", "demo", "--data_dir", digits_dir, "--model_dir", str(tmp_path)]) == 2
    assert f"{tmp_path} is in use by a training run (pid {os.getpid()})" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == [".lock"]  # the holder's run is untouched


def test_a_disk_too_full_for_the_next_backup_ends_the_run_in_one_line(digits_dir, small_disk, capsys):
    model_dir = small_disk("256k") / "model"
    flags = ["--config", "demo", "--data_dir", digits_dir, "--model_dir", str(model_dir), *SMALL_MODEL_FLAGS,
             "--set", "train.epochs=1", "--set", "train.warmup_epochs=0"]
    assert train.main(flags) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"python -m training.train: error: {model_dir} has "), error
    assert "MiB free; the next backup and checkpoints need about" in error[0]
    # Stopped before writing any state: no backup or checkpoint, half-written or whole.
    assert sorted(path.name for path in model_dir.iterdir()) == [".lock", "backup", "config.yaml"]
    assert not any((model_dir / "backup").iterdir())


def test_orphaned_temporary_checkpoints_are_removed_when_training_starts(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    orphan = checkpoints / f"{atomic_files.TEMP_MARKER}0123abcd.keras"
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


class PoisonWeights(keras.callbacks.Callback):
    """Sets the first kernel to NaN before one step: a run that diverges there."""

    def __init__(self, epoch, step):
        super().__init__()
        self.epoch, self.step, self._current_epoch = epoch, step, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self._current_epoch, batch) == (self.epoch, self.step):
            kernel = self.model.trainable_weights[0]
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_a_diverged_epoch_saves_nothing_and_the_rerun_resumes_from_the_last_finite_state(digits_dir, tmp_path,
                                                                                          monkeypatch):
    config = _short_run(digits_dir, tmp_path)
    strategy = tf.distribute.get_strategy()
    build_callbacks = experiment.build_callbacks
    monkeypatch.setattr(experiment, "build_callbacks",
                        lambda *args: [PoisonWeights(epoch=1, step=1)] + build_callbacks(*args))
    with pytest.raises(errors.DivergedError, match="the training loss is nan at step 2 of epoch 2"):
        experiment.run_experiment(config, strategy)
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert _logged_epochs(tmp_path) == [0]
    last = keras.saving.load_model(tmp_path / "checkpoints" / "last.keras", compile=False)
    assert all(np.isfinite(weight).all() for weight in last.get_weights())

    monkeypatch.setattr(experiment, "build_callbacks", build_callbacks)
    keras.backend.clear_session()
    _, results = experiment.run_experiment(config, strategy)
    assert (results["start_epoch"], results["start_step"]) == (1, 3)
    assert np.isfinite(results["loss"]) and _logged_epochs(tmp_path) == [0, 1, 2]


def test_a_huge_learning_rate_ends_the_run_in_one_line_and_the_corrected_rerun_trains(digits_dir, tmp_path, capsys):
    flags = ["--config", "demo", "--data_dir", digits_dir, "--model_dir", str(tmp_path), *SMALL_MODEL_FLAGS,
             "--set", "train.epochs=1", "--set", "train.steps_per_epoch=3", "--set", "train.warmup_epochs=0",
             "--set", "input.cache=false"]
    assert train.main(flags + ["--set", "train.base_learning_rate=1.0e+30"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Training diverged: the training loss is nan at step 2 of epoch 1" in error[0], error
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "train_log.csv").exists()
    # Nothing to resume: the corrected command is not held to the diverged run's config.
    assert train.main(flags) == 0
    assert np.isfinite(json.loads((tmp_path / "eval_results.json").read_text())["loss"])


def test_a_restored_state_that_is_not_finite_is_refused(digits_dir, tmp_path):
    model = experiment.build_and_compile(_short_run(digits_dir, tmp_path), tf.distribute.get_strategy())
    model.trainable_weights[0].assign(np.full(model.trainable_weights[0].shape, np.inf, "float32"))
    guard = callbacks_lib.DivergenceGuard(str(tmp_path / "backup"))
    guard.set_model(model)
    with pytest.raises(errors.DivergedError, match="holds non-finite values .1 non-finite variable"):
        guard.on_epoch_begin(0)


def _unreadable_training_images(digits_dir, target):
    """The digits with every training image replaced by bytes that are no JPEG, under
    a valid manifest (the converter's checks passed; the images rotted later)."""
    shutil.copytree(digits_dir, target)
    for path in sorted(target.glob("train-*")):
        rewritten = []
        for serialized in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            example = tf.train.Example.FromString(serialized)
            example.features.feature[records.IMAGE_KEY].bytes_list.value[:] = [b"not a jpeg"]
            rewritten.append(example.SerializeToString())
        records.write_records_atomically(str(path), rewritten)
    shards = manifest.read_manifest(str(target))
    manifest.write_manifest(str(target), manifest.Manifest(
        {split: tuple(manifest.describe_shards([str(target / shard.name) for shard in split_shards]))
         for split, split_shards in shards.splits.items()},
        classes=shards.classes, first_label=shards.first_label))
    return target


def test_a_training_split_without_one_usable_record_stops_in_one_line_instead_of_hanging(digits_dir, tmp_path):
    data_dir = _unreadable_training_images(digits_dir, tmp_path / "data")
    command = [sys.executable, "-m", "training.train", "--config", "demo", "--data_dir", str(data_dir),
               "--model_dir", str(tmp_path / "model"), *SMALL_MODEL_FLAGS,
               "--set", "train.epochs=1", "--set", "train.warmup_epochs=0"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3"))
    errors_said = [line for line in run.stderr.splitlines() if line.startswith("python -m training.train: error:")]
    assert run.returncode == 2 and len(errors_said) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"No usable record in a whole pass over the train split of {data_dir}" in errors_said[0]
    # One warning per skipped record of that one pass, not an endless loop of them.
    assert run.stderr.count("WARNING: skipping") <= 1500
