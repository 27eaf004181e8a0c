"""Data parallelism under Keras's JAX backend, behind the strategy members the trainer uses.

The trainer was written against `tf.distribute.Strategy`; under JAX the model is
distributed by `keras.distribution.DataParallel` instead, and tf.data (TensorFlow on
the host CPU) still feeds it. :class:`JaxDataParallel` offers the three members the
trainer needs of a strategy, so one code path trains under both backends:

- ``num_replicas_in_sync``: every device of the platform, over all hosts;
- ``scope()``: nothing to enter (the distribution is set globally);
- ``distribute_datasets_from_function(fn)``: ``fn`` with this host's
  ``tf.distribute.InputContext``; each host reads its share of the files and yields
  its part of the global batch, which Keras splits over the local devices.

Batch norms see the global batch without synchronization: under ``jax.jit`` a mean over
the sharded batch axis is a mean over all of it.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import jax
import keras
import tensorflow as tf

from training.errors import StrategyError

PLATFORMS = ("tpu", "gpu", "cpu")


class JaxDataParallel:
    """``keras.distribution.DataParallel`` over all devices of one platform.

    Args:
      platform: "tpu", "gpu" or "cpu"; None: JAX's default platform.
      multi_host: initialise JAX's multi-host runtime first
        (``keras.distribution.initialize()``, configured by the environment variables
        ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES``,
        ``KERAS_DISTRIBUTION_PROCESS_ID``, or by the TPU pod itself).

    Raises:
      StrategyError: JAX has no device of that platform.
    """

    def __init__(self, platform: str | None, multi_host: bool = False):
        if platform not in PLATFORMS + (None,):
            raise StrategyError(f"Unknown JAX platform {platform!r}; expected one of {PLATFORMS}.")
        if multi_host:
            # Before anything else touches JAX's devices, as jax.distributed requires.
            keras.distribution.initialize()
        platform = platform or jax.default_backend()
        try:
            devices = jax.devices(platform)
        except RuntimeError as error:
            raise StrategyError(
                f"--backend jax --strategy {platform}: JAX finds no {platform.upper()} ({error}). Install the "
                f"JAX build for it (e.g. pip install 'jax[tpu]'), or use --strategy cpu."
            ) from None
        self.platform = platform
        self.devices = devices
        self.process_index = jax.process_index()
        self.process_count = jax.process_count()
        self.distribution = keras.distribution.DataParallel(devices=devices) if len(devices) > 1 else None
        keras.distribution.set_distribution(self.distribution)

    @property
    def num_replicas_in_sync(self) -> int:
        return len(self.devices)

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def distribute_datasets_from_function(
        self, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]
    ) -> tf.data.Dataset:
        """This host's dataset, batched to global_batch / hosts."""
        context = tf.distribute.InputContext(
            num_input_pipelines=self.process_count,
            input_pipeline_id=self.process_index,
            num_replicas_in_sync=self.process_count,
        )
        return dataset_fn(context)
