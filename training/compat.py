"""A version-guarded fix for Keras 3 `fit` under MultiWorkerMirroredStrategy.

keras-team/keras#20329: with the TensorFlow backend, `model.fit` under a
MultiWorkerMirroredStrategy (MWMS) in multi-worker mode fails in two places of
`keras/src/backend/tensorflow/trainer.py` (reproduced with Keras 3.15.1, TF 2.20):

1. `TensorFlowTrainer._maybe_symbolic_build` reduces the first distributed input
   batch across workers with `strategy.reduce("MEAN", batch, axis=None)` only to learn
   its shapes; under MWMS that cross-worker reduction of the input fails. One
   replica's batch has the same shapes, so the patch passes that instead.
2. `reduce_per_replica` reduces the per-step logs (scalar loss and metrics) with
   `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars. The patch uses
   `axis=None` (a mean over replicas) for scalars and keeps `axis=0` otherwise.

Both patches change behaviour only under MWMS in multi-worker mode and delegate to
Keras otherwise. They are applied only to the Keras versions known to have the bug
(`AFFECTED_KERAS_VERSIONS`) and only when the patched functions still exist; a newer
Keras is left alone with a warning, to be re-checked with
tests/test_train_distributed.py. `steps_per_execution > 1` still fails under MWMS
(keras-team/keras#19246); training/train.py rejects it there.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

# [first affected, first fixed): 3.0 introduced the TF trainer with these functions;
# no release had fixed them as of 3.15.1 (the newest tested here).
AFFECTED_KERAS_VERSIONS = ((3, 0), (3, 16))

_ORIGINAL_SYMBOLIC_BUILD = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
_ORIGINAL_REDUCE_PER_REPLICA = tf_trainer.reduce_per_replica


def keras_version() -> tuple[int, int]:
    major, minor = keras.version().split(".")[:2]
    return int(major), int(minor)


def needs_multi_worker_patch(version: tuple[int, int] | None = None) -> bool:
    """Whether this Keras version is one with the MWMS `fit` bugs."""
    version = version or keras_version()
    first_affected, first_fixed = AFFECTED_KERAS_VERSIONS
    return first_affected <= version < first_fixed


def is_patched() -> bool:
    return tf_trainer.reduce_per_replica is _reduce_per_replica


def patch_keras_for_multi_worker() -> bool:
    """Installs both patches (idempotent). Returns whether they are installed.

    Call it before `fit` whenever the strategy is a MultiWorkerMirroredStrategy.
    """
    if is_patched():
        return True
    if not needs_multi_worker_patch():
        warnings.warn(
            f"Keras {keras.version()} is outside the versions known to need the "
            f"MultiWorkerMirroredStrategy fit fix {AFFECTED_KERAS_VERSIONS}; not patching. "
            "If fit fails under MWMS, see keras-team/keras#20329.",
            stacklevel=2,
        )
        return False
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = _reduce_per_replica
    return True


def _is_multi_worker(strategy) -> bool:
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.extended._in_multi_worker_mode()


def _first_replica(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Patch 1: build from one local replica's batch instead of a cross-worker mean."""
    strategy = self._distribute_strategy
    if iterator is None or strategy is None or not _is_multi_worker(strategy):
        return _ORIGINAL_SYMBOLIC_BUILD(self, iterator=iterator, data_batch=data_batch)
    for _, _, batches in iterator:
        data_batch = tree.map_structure(
            lambda value: _first_replica(strategy, value), next(batches)
        )
        break
    return _ORIGINAL_SYMBOLIC_BUILD(self, data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    """Patch 2: under MWMS, a MEAN over replicas of scalar logs uses axis=None."""
    if reduction not in ("auto", "mean") or not _is_multi_worker(strategy):
        return _ORIGINAL_REDUCE_PER_REPLICA(values, strategy, reduction)

    def reduce(value):
        rank = _first_replica(strategy, value).shape.rank
        return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

    return tree.map_structure(reduce, values)
