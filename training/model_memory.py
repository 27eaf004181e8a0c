"""Whether a run fits in memory: counted before it starts, named in one line if not.

`python -m training.train` checks, before it writes anything, that the configured
model builds at the configured input (the constructors' own checks, such as the
smallest input size, become a ConfigError) and that its training state (float32
weights, their gradients, the optimizer's slots and EMA copies) fits in this machine's
memory: the model is built with shapes only, so the count costs no allocation however
large the model. What cannot be counted up front (the activations of a batch, which
depend on the backend's kernels and the device) is caught when it happens: an
out-of-memory error while building, training or evaluating ends the run with one line
naming the settings that decide it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import keras
import numpy as np
from keras.src.backend.common import global_state

from lambda_keras import cli
from training import experiment
from training.config import ConfigError, ExperimentConfig
from training.errors import OutOfMemoryError

# cgroup v2: the memory a container may use, or "max" when unlimited.
CGROUP_MEMORY_LIMIT = "/sys/fs/cgroup/memory.max"


@contextlib.contextmanager
def _variables_without_values() -> Iterator[None]:
    """Keras variables made inside have shapes and dtypes but no values.

    Keras lists such variables and gives them values at the exit of the next ordinary
    StatelessScope (its TensorFlow backend opens one for every output-shape
    computation), so they are taken off that list again: otherwise the run's first
    shape computation would allocate the whole counted model.
    """
    before = {id(variable) for variable in global_state.get_global_attribute("uninitialized_variables", [])}
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        remaining = global_state.get_global_attribute("uninitialized_variables", [])
        global_state.set_global_attribute(
            "uninitialized_variables", [variable for variable in remaining if id(variable) in before]
        )


def training_state(config: ExperimentConfig) -> tuple[int, int]:
    """(trainable parameters, bytes of the training state) of the configured model.

    The state is every model weight, and per trainable weight its gradient and the
    copies `optimization.build_optimizer`'s SGD keeps: a momentum slot when
    train.momentum is set, the EMA when train.ema_decay is. Mixed precision keeps all of
    them in float32.
    """
    try:
        with _variables_without_values():
            model = experiment.build_model(config)
    except ValueError as error:
        # The constructors check their arguments against each other and the input size
        # (keras.applications' convention), which the config's sections alone cannot.
        raise ConfigError(
            f"Invalid config: the model does not build at input.image_size={config.input.image_size}, "
            f"input.num_classes={config.input.num_classes}: {error}"
        ) from None
    copies_per_trainable = 1 + (config.train.momentum > 0) + config.train.use_ema
    trainable = sum(_bytes(variable) for variable in model.trainable_variables)
    parameters = sum(int(np.prod(variable.shape)) for variable in model.trainable_variables)
    return parameters, sum(_bytes(variable) for variable in model.weights) + copies_per_trainable * trainable


def _bytes(variable: keras.Variable) -> int:
    return int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize


def machine_memory_bytes() -> int:
    """The physical memory, or the container's limit where that is lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open(CGROUP_MEMORY_LIMIT, encoding="ascii") as file:
            limit = file.read().strip()
    except OSError:
        return memory
    return min(memory, int(limit)) if limit.isdigit() else memory


def check_training_state_fits(config: ExperimentConfig, memory_bytes: int | None = None) -> None:
    """Raises ConfigError when the model's training state alone exceeds the memory.

    A bound that never refuses a run that could fit: the activations, the input
    pipeline and the frameworks need memory on top. On a TPU or GPU the state lives
    on each device, whose memory is smaller than its host's; running out there is
    reported by `out_of_memory_in_one_line`.
    """
    memory_bytes = machine_memory_bytes() if memory_bytes is None else memory_bytes
    parameters, state_bytes = training_state(config)
    if state_bytes > memory_bytes:
        raise ConfigError(
            f"The model ({config.model.architecture}, {parameters:,} trainable parameters at "
            f"input.num_classes={config.input.num_classes}) needs {state_bytes / 2**30:.1f} GiB for its weights, "
            f"gradients and optimizer state alone, more than this machine's {memory_bytes / 2**30:.1f} GiB; "
            "configure a smaller model."
        )


@contextlib.contextmanager
def out_of_memory_in_one_line(config: ExperimentConfig) -> Iterator[None]:
    """Turns an out-of-memory error (TensorFlow, XLA under JAX, Python) into an
    OutOfMemoryError of one line that names the allocation and what to lower."""
    try:
        yield
    except Exception as error:  # pylint: disable=broad-except
        detail = cli.out_of_memory_detail(error)
        if detail is None:
            raise
        raise OutOfMemoryError(
            f"Out of memory ({detail}) with input.global_batch_size={config.input.global_batch_size}, "
            f"input.image_size={config.input.image_size} and {config.model.architecture}: lower the batch or "
            "the image size, or configure a smaller model."
        ) from None
