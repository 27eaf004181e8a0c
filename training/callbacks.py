"""Keras callbacks of the training CLI: crash-safe checkpoints and per-epoch statistics."""

from __future__ import annotations

import os
import time
import uuid

import keras
import tensorflow as tf
from keras import ops

from training.input_pipeline import SkippedRecordCounter


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the model as a `.keras` file at the end of an epoch, never half-written.

    The model is written to a temporary file in the same folder and then renamed over
    `filepath`, so a run killed while saving leaves the previous checkpoint intact
    (rename within a folder is atomic on POSIX file systems; on GCS the object appears
    only when complete). Place it after `SwapEMAWeights(swap_on_epoch=True)` in the
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


def save_atomically(model: keras.Model, filepath: str) -> None:
    """`model.save(filepath)` through a temporary file renamed into place."""
    folder = os.path.dirname(filepath)
    tf.io.gfile.makedirs(folder)
    temporary = os.path.join(folder, f".tmp-{uuid.uuid4().hex}.keras")
    try:
        model.save(temporary)
        tf.io.gfile.rename(temporary, filepath, overwrite=True)
    finally:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)


class TrainingStats(keras.callbacks.Callback):
    """Adds learning_rate, images_per_second and skipped_records to the epoch logs.

    Place it before TensorBoard and CSVLogger: Keras hands every callback the same
    logs dict, so they record these values too. It also remembers where training
    started (`start_epoch`, `start_step`, which are not 0 after a resume from a
    backup: place it after BackupAndRestore) and prints it.

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

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start_step = int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.start_epoch is None:
            self.start_epoch = epoch
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
