"""Shared test settings: quiet TensorFlow, CPU only, deterministic seeds.

The layer and model tests also run under ``KERAS_BACKEND=jax`` and ``torch``
(tests/test_platforms.py starts those runs); TensorFlow's device set-up is then skipped,
and under ``torch`` PyTorch runs each op on one thread.
"""

import gc
import os
import shutil
import subprocess
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Keras's JAX backend compiles every operation it runs eagerly, anew in each process. One
# compilation cache for the session's JAX processes (platform runs, workers, trainings)
# compiles each once. The xdist workers and subprocesses inherit the variables. (No size
# cap: with one, JAX scans the whole folder at every write.)
_SESSION_JAX_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_JAX_CACHE = tempfile.mkdtemp(prefix="lambda-keras-jax-cache-")
    os.environ.update({
        "JAX_COMPILATION_CACHE_DIR": _SESSION_JAX_CACHE,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    })

# Every JAX process of the suite (platform runs, trainings, workers) compiles at XLA's
# lowest optimisation level and with the CPU's older loop emitters: the tests check
# numbers, gradients and training, not XLA's optimisations, and on these small programs
# compiling dominates. On a 2-core AVX2 machine the JAX trainings took 23% less CPU time
# and the eager layer tests 27% less (docs/design.md, "The test suite's time").
# tests/test_compiled_graphs.py, which reads XLA's compiled graphs, removes both.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
JAX_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if JAX_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {JAX_XLA_FLAGS}".strip()

import pytest  # noqa: E402


def pytest_configure(config):
    """Sets up the backend in every process that runs tests; pytest-xdist's controller,
    which only hands tests to its workers, does not import Keras (or TensorFlow) at all."""
    distributes = getattr(config.option, "numprocesses", None) and not config.option.collectonly
    if distributes and not hasattr(config, "workerinput"):
        return
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Two logical CPU devices, so that MirroredStrategy tests run on a CPU-only
        # machine. This must happen before TensorFlow initialises its devices, hence
        # before the test modules are imported.
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
        )
    elif keras.backend.backend() == "torch":
        import torch

        # One intra-op thread. The tests' tensors are small, and beside the outer run's
        # other worker PyTorch's two threads wait for each other at every op (~5 ms an
        # op, a scheduler time slice, where one thread takes ~0.1 ms):
        # test_fit_learns_digits took 54 CPU-s instead of 5, the PyTorch platform run 174
        # instead of 106.
        torch.set_num_threads(1)


def pytest_collection_modifyitems(session, config, items):
    """Each xdist worker starts on its share of the tests marked slow, the platform runs
    (each a whole pytest of its own) first, and ends on short tests.

    xdist's worksteal scheduler hands worker i the i-th contiguous block of the
    collection and an idle worker steals from the end of another's queue. So the slow
    tests are dealt out in turn to the head of each block, and the short ones fill the
    blocks' ends, where stealing evens out the finish instead of one long test ending
    the run alone on one core.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    # The JAX platform run, the longest, first: the next (a oneDNN run) goes to the other worker.
    slow = sorted((item for item in items if item.get_closest_marker("slow")),
                  key=lambda item: (item.path.name != "test_platforms.py", "jax" not in item.name))
    short = [item for item in items if not item.get_closest_marker("slow")]
    blocks: list[list] = [slow[worker::workers] for worker in range(workers)]
    remaining = len(items)
    for worker, block in enumerate(blocks):
        size = remaining // (workers - worker)  # the size xdist sends this block's worker
        fill = max(size - len(block), 0)
        block.extend(short[:fill])
        del short[:fill]
        remaining -= len(block)
    blocks[-1].extend(short)
    items[:] = [item for block in blocks for item in block]


def pytest_collection_finish(session):
    """Moves everything the imports made into the collector's permanent generation.

    Python's own full collections then do not walk the ~500k objects that TensorFlow,
    JAX, PyTorch and the test modules leave behind after import. Objects made after this
    point are collected as before.
    """
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config):
    if _SESSION_JAX_CACHE is not None:
        shutil.rmtree(_SESSION_JAX_CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    """A folder of the digits demo data (TFRecord shards and manifest), one per test module."""
    from training import demo_data  # TensorFlow and scikit-learn: only where a test asks for it

    path = tmp_path_factory.mktemp("digits")
    demo_data.write_demo_data(str(path))
    return str(path)


@pytest.fixture()
def small_disk(tmp_path):
    """Mounts a tmpfs of a given size (`small_disk("32k")`) under tmp_path and returns its
    path: a disk that fills. tmpfs gives each file whole 4 KiB pages."""
    mounted = []

    def mount(size: str):
        mount_point = tmp_path / f"disk_{len(mounted)}"
        mount_point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with float32, a fixed seed and no leftover global state, the
    environment included: ``train.main`` run in the test process sets KERAS_BACKEND and
    TF_ENABLE_ONEDNN_OPTS, which later tests' subprocesses would otherwise inherit.

    Keras's session is cleared without its forced full garbage collection: the graphs of
    every training run in the worker (TensorFlow keeps the traced train steps) add up to
    a few hundred thousand live objects, and a full collection after every test then took
    0.4-1 CPU-seconds, most of the time of the suite's short tests. Python's own
    collections still free what tests leave in cycles.
    """
    import keras

    environment = dict(os.environ)
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)
    if os.environ != environment:
        os.environ.clear()
        os.environ.update(environment)
