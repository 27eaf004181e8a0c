"""The peer venv: timm 1.0.31 with torch 2.14.1 and torchvision 0.29.1 (requirements-peers.txt).

timm imports torchvision, and no torchvision imports beside the test venv's torch
2.13.0 (CPU build), so the timm peers live in a venv of their own and run in
subprocesses (tests/timm_reference_worker.py). The tests find its python at
``$LAMBDA_KERAS_PEER_PYTHON`` or ``<repo>/.venv-peers/bin/python`` (what ``.ci/run``
and the README's test command create). Without it a timm test skips, naming what is
missing; under ``CI=true`` it fails instead, so CI never passes without the peers.
"""

import functools
import os
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PEER_PYTHON_VARIABLE = "LAMBDA_KERAS_PEER_PYTHON"
DEFAULT_PEER_PYTHON = REPOSITORY / ".venv-peers" / "bin" / "python"
INSTALL = ("python3.11 -m venv .venv-peers && .venv-peers/bin/pip install -r requirements-peers.txt")


@functools.cache
def _find_peer_python() -> tuple[str | None, str]:
    """(the peer python, "") or (None, why there is none)."""
    python = os.environ.get(PEER_PYTHON_VARIABLE) or str(DEFAULT_PEER_PYTHON)
    if not Path(python).is_file():
        return None, f"no peer python at {python} (create it: {INSTALL}; or set {PEER_PYTHON_VARIABLE})"
    probe = subprocess.run(
        [python, "-c", "import safetensors, timm.layers.lambda_layer"], capture_output=True, text=True, timeout=300
    )
    if probe.returncode:
        error = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        return None, f"timm does not import under the peer python {python}: {error}"
    return python, ""


def peer_python() -> str:
    """The peer venv's python; skips the test without it, or fails it under ``CI=true``."""
    python, reason = _find_peer_python()
    if python is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the timm peers are missing: {reason}", pytrace=False)
        pytest.skip(reason)
    return python
