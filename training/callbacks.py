"""Keras callbacks of the training CLI: crash-safe checkpoints, the epoch log and statistics."""

from __future__ import annotations

import csv
import io
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from lambda_keras.atomic_files import TEMP_MARKER, write_text_atomically, written_atomically
from training.errors import DivergedError, StorageError
from training.input_pipeline import SkippedRecordCounter


# Room for the CSV log, TensorBoard events and file-system overhead beside the state.
_FREE_SPACE_MARGIN_BYTES = 4 * 2**20


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model as a `.keras` file at the end of an epoch, never half-written.

    The model is written to a temporary file in the same folder and then renamed over
    `filepath`, so a run killed while saving leaves the previous checkpoint intact
    (rename within a folder is atomic on POSIX file systems; on GCS the object appears
    only when complete). Temporary files that a killed run left behind are removed
    when training starts. Place it after `SwapEMAWeights(swap_on_epoch=True)` in the
    callback list to save the EMA weights.

    Args:
      filepath: the `.keras` file.
      monitor: a log key such as "val_top1": save only when it improves on the best
        value seen by this callback; None: save every epoch (the "last" checkpoint).
      mode: "max" or "min", the direction of improvement of `monitor`.
      initial_best: the best value of an earlier, interrupted run (None: none).
    """

    def __init__(self, filepath: str, monitor: str | None = None, mode: str = "max",
                 initial_best: float | None = None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.filepath = filepath
        self.monitor = monitor
        self.mode = mode
        self.best = initial_best

    def on_train_begin(self, logs: dict | None = None) -> None:
        # A run killed while saving leaves its temporary file; nothing else writes them.
        pattern = os.path.join(os.path.dirname(self.filepath), f"{TEMP_MARKER}*.keras")
        for orphan in tf.io.gfile.glob(pattern):
            tf.io.gfile.remove(orphan)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None:  # Not an evaluation epoch.
                return
            if self.best is not None and (
                value <= self.best if self.mode == "max" else value >= self.best
            ):
                return
            self.best = float(value)
        save_atomically(self.model, self.filepath)


class FreeSpaceCheck(keras.callbacks.Callback):
    """Ends the run with a StorageError before a backup or checkpoint could fill the disk.

    A write that fills the disk leaves a half-written file, and h5py may crash the
    process on it; checking first keeps every file whole, so the same command resumes
    once space is freed. Checked when training starts and at every batch and epoch end
    (a `statvfs`, microseconds). One epoch end writes the backup, its previous copy and
    two `.keras` checkpoints, hence four times the state. Place it first in the list.

    Args:
      folder: model_dir; an object-store URL is not checked.
    """

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder
        self.needed_bytes = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        variables = list(self.model.weights) + list(getattr(self.model.optimizer, "variables", []))
        state_bytes = sum(
            int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize for variable in variables
        )
        self.needed_bytes = 4 * state_bytes + _FREE_SPACE_MARGIN_BYTES
        self._check()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._check()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._check()

    def _check(self) -> None:
        if "://" in self.folder:
            return
        status = os.statvfs(self.folder)
        free_bytes = status.f_bavail * status.f_frsize
        if free_bytes < self.needed_bytes:
            raise StorageError(
                f"{self.folder} has {free_bytes / 2**20:.1f} MiB free; the next backup and checkpoints need about "
                f"{self.needed_bytes / 2**20:.1f} MiB. Free some space and rerun the same command: it resumes "
                "from the last backup."
            )


class DivergenceGuard(keras.callbacks.Callback):
    """Ends the run with a DivergedError at the first non-finite loss or weight, before
    the callbacks after it save anything of that epoch.

    Checked: the training loss at every batch end (Keras logs the epoch's running mean,
    non-finite from the step whose loss is); at every epoch end, the epoch's loss and
    val_loss and every model and optimizer variable (the EMA included; one pass over
    the state, milliseconds for the demo, well under a second for ResNet-50); and at
    the first epoch's start, the state BackupAndRestore restored. Place it before the
    epoch log, the backup and the checkpoints: a raise there leaves the backup and
    checkpoints at the last finite epoch end (or mid-epoch backup), which the same
    command resumes from. A restored state that is not finite (a backup of an older
    version) is refused instead of trained on.

    Args:
      backup_dir: the BackupAndRestore folder, named in the messages.
    """

    def __init__(self, backup_dir: str):
        super().__init__()
        self.backup_dir = backup_dir
        self._epoch = 0
        self._restored_state_checked = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        if self._restored_state_checked:
            return
        self._restored_state_checked = True
        bad = self._non_finite_variables()
        if bad:
            raise DivergedError(
                f"The state restored from {self.backup_dir} holds non-finite values ({bad}); it cannot be trained "
                f"on. Delete {self.backup_dir} to start over from the config, or use a new --model_dir."
            )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._diverged(f"the training loss is {float(loss)} at step {batch + 1} of epoch {self._epoch + 1}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                self._diverged(f"the epoch's {key} is {float(value)} at the end of epoch {epoch + 1}")
        bad = self._non_finite_variables()
        if bad:
            self._diverged(f"{bad} at the end of epoch {epoch + 1}")

    def _non_finite_variables(self) -> str:
        """'' when every variable is finite, else which are not (the first three named)."""
        variables = list(self.model.weights) + list(getattr(self.model.optimizer, "variables", []))
        bad = [variable.path for variable in variables
               if not np.isfinite(ops.convert_to_numpy(variable.value)).all()]
        if not bad:
            return ""
        return f"{len(bad)} non-finite variable(s): {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}"

    def _diverged(self, what: str) -> None:
        raise DivergedError(
            f"Training diverged: {what}. Nothing of this epoch was saved: {self.backup_dir} and the checkpoints "
            "keep the last finite state. Lower train.base_learning_rate (or raise train.warmup_epochs) and "
            "train into a new --model_dir; rerunning the same command resumes from that finite state."
        )


def save_atomically(model: keras.Model, filepath: str) -> None:
    """`model.save(filepath)` through a temporary file renamed into place."""
    tf.io.gfile.makedirs(os.path.dirname(filepath))
    with written_atomically(filepath, suffix=".keras") as temporary:
        model.save(temporary)


class TrainingStats(keras.callbacks.Callback):
    """Adds learning_rate, images_per_second and skipped_records to the epoch logs.

    Place it before TensorBoard and the epoch log: Keras hands every callback the same
    logs dict, so they record these values too. It also remembers where training
    started (`start_epoch`, `start_step`, which are not 0 after a resume from a
    backup, read at the first epoch's start, once BackupAndRestore has restored) and
    prints it.

    images_per_second counts the training steps of the epoch times the global batch
    over the time from the epoch's start to its last training step (validation
    excluded; the first epoch includes tracing and compilation).

    Args:
      global_batch_size: images per training step over all replicas.
      skipped_records: the training pipeline's corrupt-record counter.
    """

    def __init__(self, global_batch_size: int, skipped_records: SkippedRecordCounter):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.skipped_records = skipped_records
        self.start_epoch: int | None = None
        self.start_step: int | None = None
        self._epoch_start = 0.0
        self._last_batch_end = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.start_epoch is None:
            self.start_epoch = epoch
            self.start_step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
            resumed = " (resumed from the backup)" if self.start_step else ""
            print(f"Training starts at epoch {epoch + 1}, optimizer step "
                  f"{self.start_step}{resumed}.", flush=True)
        self._epoch_start = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # `batch` is the index of the last step of the call (steps_per_execution).
        self._steps = batch + 1
        self._last_batch_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        seconds = max(self._last_batch_end - self._epoch_start, 1e-9)
        logs["images_per_second"] = self._steps * self.global_batch_size / seconds
        logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        skipped = self.skipped_records.count
        logs["skipped_records"] = skipped
        if skipped:
            print(f"WARNING: {skipped} corrupt training records skipped so far.", flush=True)


class EpochLog(keras.callbacks.Callback):
    """One CSV row per epoch, as `keras.callbacks.CSVLogger` writes them, kept consistent
    with the backup after a kill at any point.

    Columns: "epoch", then the log keys sorted (the `val_` ones included from the first
    row; "NA" where an epoch has no value). A resumed run drops the rows of the epochs
    it is about to redo, so that a row written just before a kill, for an epoch whose
    backup was not yet written, is not duplicated; place it before BackupAndRestore, so
    that every backed-up epoch has its row. The file is rewritten whole, through a
    temporary file renamed into place, at every epoch's end (a few hundred rows at
    most; object stores have no append).

    Args:
      filepath: the CSV file, created if missing.
    """

    def __init__(self, filepath: str):
        super().__init__()
        self.filepath = filepath
        self._columns: list[str] | None = None
        self._rows: list[dict] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._rows is not None:
            return
        self._rows = []
        if tf.io.gfile.exists(self.filepath):
            with tf.io.gfile.GFile(self.filepath) as file:
                reader = csv.DictReader(file)
                self._columns = list(reader.fieldnames or []) or None
                self._rows = [row for row in reader if int(row["epoch"]) < epoch]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        if self._columns is None:
            keys = sorted(logs)
            if not any(key.startswith("val_") for key in keys):
                # Validation runs every validation_freq epochs; its columns exist from the start.
                keys = sorted(keys + [f"val_{key}" for key in keys])
            self._columns = ["epoch"] + keys
        self._rows = (self._rows or []) + [{"epoch": epoch, **{key: logs.get(key, "NA") for key in self._columns[1:]}}]
        text = io.StringIO()
        writer = csv.DictWriter(text, self._columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        write_text_atomically(self.filepath, text.getvalue())
