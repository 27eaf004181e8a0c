"""Strategies for TPU, GPU, multi-worker and CPU training, under TensorFlow or JAX.

`create_strategy(name, tpu)` is the one factory: the resolver calls sit behind it,
so that the rest can be tested without the hardware. Every failure to find the
requested hardware raises `StrategyError` at once with what was looked for, instead
of hanging or falling back silently.

| name        | strategy                                   | replicas               |
|-------------|--------------------------------------------|------------------------|
| tpu         | TPUStrategy(TPUClusterResolver(tpu))       | TPU cores              |
| gpu         | MirroredStrategy (default strategy if 1)   | local GPUs             |
| multiworker | MultiWorkerMirroredStrategy from TF_CONFIG | workers x local GPUs   |
| cpu         | the default strategy                       | 1                      |
| auto        | the first that applies: multiworker (TF_CONFIG with several tasks), tpu (a    |
|             | TPU named or attached), gpu, cpu                                                |

Under Keras's JAX backend the same names give a `JaxDataParallel`
(`training/jax_distribution.py`): data parallelism over every local device of the
platform (tpu, gpu, cpu; auto: the default JAX platform), with multiworker meaning
several hosts joined by `keras.distribution.initialize()`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Union

import keras
import tensorflow as tf

from training import compat
from training.errors import StrategyError

# A tf.distribute.Strategy, or a JaxDataParallel under the JAX backend.
Strategy = Union[tf.distribute.Strategy, Any]


def resolve_strategy_name(name: str, tpu: str | None = None) -> str:
    """The concrete strategy for `name`: "auto" becomes tpu, gpu, multiworker or cpu."""
    if name != "auto":
        return name
    if _tf_config_task_count() > 1:
        return "multiworker"
    if tpu or os.environ.get("TPU_NAME") or tf.config.list_physical_devices("TPU"):
        return "tpu"
    if tf.config.list_physical_devices("GPU"):
        return "gpu"
    return "cpu"


def create_strategy(name: str, tpu: str | None = None, worker_start_timeout: float = 300) -> Strategy:
    """Creates the strategy `name` (see the module table); call before any other op.

    Args:
      name: "auto", "tpu", "gpu", "multiworker" or "cpu".
      tpu: for "tpu": a TPU name, a grpc:// address, or "local" on a TPU VM; None
        means $TPU_NAME, else "local".
      worker_start_timeout: seconds a multi-worker start waits for the other
        workers of TF_CONFIG to start (`wait_for_workers`).

    Raises:
      StrategyError: no TPU / GPU / TF_CONFIG where one was asked for.
    """
    if keras.backend.backend() == "jax":
        return _jax_data_parallel(name, tpu)
    name = resolve_strategy_name(name, tpu)
    if name == "tpu":
        return _tpu_strategy(tpu or os.environ.get("TPU_NAME") or "local")
    if name == "gpu":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise StrategyError(
                "--strategy gpu: TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a CUDA build "
                "(pip install 'tensorflow[and-cuda]~=2.20.0') or use --strategy cpu."
            )
        if len(gpus) == 1:
            # No strategy on one GPU: Keras then compiles with XLA (jit_compile
            # "auto"), which it turns off under any strategy.
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if _tf_config_task_count() < 1:
            raise StrategyError(
                "--strategy multiworker needs TF_CONFIG, e.g. "
                '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, '
                '"task": {"type": "worker", "index": 0}}, set on every worker.'
            )
        wait_for_workers(worker_start_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        compat.patch_keras_for_multi_worker()
        return strategy
    if name == "cpu":
        return tf.distribute.get_strategy()
    raise StrategyError(
        f"Unknown strategy {name!r}; expected auto, tpu, gpu, multiworker or cpu."
    )


def is_jax(strategy: Strategy) -> bool:
    return not isinstance(strategy, tf.distribute.Strategy)


def is_tpu_strategy(strategy: Strategy) -> bool:
    if is_jax(strategy):
        return strategy.platform == "tpu"
    return isinstance(strategy, (tf.distribute.TPUStrategy,))


def is_multi_worker(strategy: Strategy) -> bool:
    if is_jax(strategy):
        return strategy.process_count > 1
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def input_pipelines(strategy: Strategy) -> int:
    """The hosts that read input (one `tf.distribute.InputContext` pipeline each):
    the workers under MWMS, the TPU hosts under TPUStrategy, the JAX processes."""
    if is_jax(strategy):
        return strategy.process_count
    if is_multi_worker(strategy):
        return strategy.extended._num_workers  # pylint: disable=protected-access
    if is_tpu_strategy(strategy):
        return strategy.extended.num_hosts
    return 1


def worker_index(strategy: Strategy) -> int:
    """This process's worker index under MWMS or multi-host JAX (0 elsewhere)."""
    if is_jax(strategy):
        return strategy.process_index
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None:
        return 0
    return int(resolver.task_id or 0)


def is_chief(strategy: Strategy) -> bool:
    """Whether this process writes checkpoints and logs: the "chief" task, or worker
    0 when the cluster has no chief (process 0 under JAX), or the only process."""
    if is_jax(strategy):
        return strategy.process_index == 0
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and not has_chief and worker_index(strategy) == 0


def _jax_data_parallel(name: str, tpu: str | None) -> Strategy:
    # Imported here: it imports JAX, which the TensorFlow path does not need.
    from training.jax_distribution import JaxDataParallel  # pylint: disable=import-outside-toplevel

    if tpu not in (None, "local"):
        raise StrategyError(
            f"--tpu {tpu}: under --backend jax the program runs on the TPU VM itself (every host of a pod "
            "runs it, joined by --strategy multiworker); a remote TPU name is TensorFlow's TPUClusterResolver "
            "only. Drop --tpu, or use --backend tensorflow."
        )

    if name == "auto":
        return JaxDataParallel(None)
    if name == "multiworker":
        # jax.distributed bounds the wait for the other hosts itself (300 s).
        return JaxDataParallel(None, multi_host=True)
    return JaxDataParallel(name)


def wait_for_workers(timeout: float, poll_seconds: float = 0.5) -> None:
    """Returns once every other task of TF_CONFIG accepts connections on its port.

    MultiWorkerMirroredStrategy waits for its peers inside TensorFlow's C++ runtime,
    with no time limit and with SIGTERM taken over by TensorFlow's preemption notice:
    a worker whose peer never starts hangs and ignores `kill`. This wait comes first,
    in Python, where SIGTERM and SIGINT work. Meanwhile the task listens on its own
    port so that its peers see it; it closes the port before TensorFlow's server binds
    it, and a peer that looks in between tries again.

    Raises:
      StrategyError: a task still does not listen after `timeout` seconds, or this
        task's port is taken; the message names them.
    """
    cluster, (job, index) = _tf_config_cluster()
    own = cluster[job][index]
    peers = sorted(address for name, addresses in cluster.items() if name != "evaluator"
                   for position, address in enumerate(addresses) if (name, position) != (job, index))
    port = int(own.rsplit(":", 1)[1])
    try:
        listener = socket.create_server(("", port))
    except OSError as error:
        raise StrategyError(f"--strategy multiworker: cannot listen on {own}, this task's address in TF_CONFIG "
                            f"({error.strerror}); is another process using the port?") from None
    print(f"Waiting up to {timeout:g} s for the workers at {', '.join(peers)} to start.", flush=True)
    deadline = time.monotonic() + timeout
    with listener:
        waiting = set(peers)
        while waiting:
            for address in sorted(waiting):
                host, peer_port = address.rsplit(":", 1)
                try:
                    socket.create_connection((host, int(peer_port)), timeout=poll_seconds).close()
                    waiting.discard(address)
                except OSError:
                    pass
            if waiting and time.monotonic() > deadline:
                raise StrategyError(
                    f"--strategy multiworker: {', '.join(sorted(waiting))} did not start within {timeout:g} s "
                    "(runtime.worker_start_timeout_seconds); start every worker of TF_CONFIG with the same cluster."
                )
            if waiting:
                time.sleep(poll_seconds)


def _tf_config_cluster() -> tuple[dict[str, list[str]], tuple[str, int]]:
    """TF_CONFIG's cluster and this task's (job, index)."""
    config = json.loads(os.environ["TF_CONFIG"])
    return config["cluster"], (config["task"]["type"], int(config["task"]["index"]))


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    if tpu == "local" and not tf.config.list_physical_devices("TPU"):
        # Without this check the resolver would wait for a TPU runtime that is not
        # there; on a TPU VM the TPU devices are listed before initialisation.
        raise StrategyError(
            "--strategy tpu: no TPU found (--tpu local, and TensorFlow lists no TPU "
            "devices). On a Cloud TPU VM install tensorflow-tpu==2.20.* (see "
            "docs/training.md); elsewhere pass --tpu NAME or use --strategy gpu / cpu."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise StrategyError(f"--strategy tpu: cannot connect to TPU {tpu!r}: {error}") from error


def _tf_config_task_count() -> int:
    """Number of tasks in $TF_CONFIG's cluster (0 without TF_CONFIG)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as error:
        raise StrategyError(f"TF_CONFIG is not a JSON object: {error}") from error
    return sum(len(tasks) for tasks in cluster.values())
