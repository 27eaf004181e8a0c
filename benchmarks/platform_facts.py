"""What a benchmark ran on: CPU model, AVX-512 or not, oneDNN, Keras backend, GPU.

Every benchmark row carries these, since the same code runs at very different speeds
with oneDNN on or off (TensorFlow turns it on by itself only on CPUs with
AVX-512-class features) and under each Keras backend.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def onednn_enabled() -> bool | None:
    """TensorFlow's oneDNN setting in this process (None: TensorFlow not loaded here)."""
    import sys

    if "tensorflow" not in sys.modules:
        return None
    from tensorflow.python.util import _pywrap_util_port  # the flag TensorFlow itself reads

    return bool(_pywrap_util_port.IsMklEnabled())


def facts(backend: str | None = None, gpu: str = "") -> dict:
    """One row's platform columns; ``backend`` defaults to the Keras backend."""
    if backend is None:
        import keras

        backend = keras.backend.backend()
    onednn = onednn_enabled()
    return {
        "cpu": cpu_model(),
        "avx512": int(has_avx512()),
        "onednn": "" if onednn is None else int(onednn),
        "backend": backend,
        "gpu": gpu,
        "cores": os.cpu_count(),
    }
