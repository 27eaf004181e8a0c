"""timm's golden fixtures (tests/fixtures/timm/*.json): regenerates their state dicts and inputs with NumPy.

A fixture records what timm computed, not timm's weights: the state dict's layout (one
entry per tensor, in the order drawn) with the recipe of each tensor's values, the seed,
the inputs' seed and shape, and timm's outputs. Everything is rebuilt here from the seed
with NumPy alone, so the tests need neither torch nor timm;
``tests/fixtures/make_timm_fixtures.py`` (run under the peer venv, requirements-peers.txt)
wrote the fixtures with the same functions, building timm's module from these tensors.

The scheme, framework-independent: ``rng = np.random.default_rng(seed)``; for each
layout entry ``[name, shape, dtype, draw, loc, scale]`` in order, ``draw`` is
``"normal"`` (``base = rng.standard_normal(shape)``), ``"uniform"``
(``base = rng.random(shape)``, in [0, 1)) or ``"zeros"`` (no draw; BN's integer
``num_batches_tracked``); the tensor is ``(loc + scale * base).astype(dtype)``, computed
in float64. ``sha256`` is the digest of every tensor's name and bytes in that order, so
a NumPy whose generator streams differ is named as such rather than as a parity failure.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).with_name("fixtures") / "timm"
REGENERATE = "python tests/fixtures/make_timm_fixtures.py (under the peer venv of requirements-peers.txt)"


def draw_tensors(layout: list, seed: int) -> dict[str, np.ndarray]:
    """The state dict of ``layout`` (entries ``[name, shape, dtype, draw, loc, scale]``), in its order."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape, dtype, draw, loc, scale in layout:
        if draw == "zeros":
            tensors[name] = np.zeros(shape, dtype)
            continue
        base = {"normal": rng.standard_normal, "uniform": rng.random}[draw](tuple(shape))
        tensors[name] = np.asarray(loc + scale * base).astype(dtype)
    return tensors


def digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in order."""
    hasher = hashlib.sha256()
    for name, tensor in tensors.items():
        hasher.update(f"{name}:{tensor.dtype.str}:{tensor.shape}\n".encode())
        hasher.update(np.ascontiguousarray(tensor).tobytes())
    return hasher.hexdigest()


def draw_inputs(spec: dict) -> np.ndarray:
    """The inputs of ``spec`` (``seed``, ``shape``): standard normal, float32, NCHW as timm took them."""
    return np.random.default_rng(spec["seed"]).standard_normal(tuple(spec["shape"])).astype(np.float32)


def load(case: str) -> dict:
    """The fixture ``tests/fixtures/timm/<case>.json``."""
    return json.loads((FIXTURES / f"{case}.json").read_text())


def state_dict(fixture: dict) -> dict[str, np.ndarray]:
    """The fixture's state dict, regenerated; checked against the recorded digest."""
    recipe = fixture["state_dict"]
    tensors = draw_tensors(recipe["layout"], recipe["seed"])
    if digest(tensors) != recipe["sha256"]:
        raise AssertionError(
            f"The state dict of fixture {fixture['case']!r} regenerates differently under NumPy "
            f"{np.__version__} than under the NumPy {fixture['versions']['numpy']} that wrote it (its generator "
            f"streams changed?); regenerate the fixtures: {REGENERATE}"
        )
    return tensors


def outputs(fixture: dict) -> np.ndarray:
    """timm's recorded outputs (logits, or the layer's NCHW outputs), float32."""
    return np.asarray(fixture["outputs"]["values"], np.float32).reshape(fixture["outputs"]["shape"])


def photo_like_image() -> np.ndarray:
    """A 333x500 uint8 RGB image: smooth colour fields, a sharp-edged patch and noise (the
    transform fixture's input; its sha256 is recorded there)."""
    rows, columns = np.mgrid[0:333, 0:500] / 50.0
    image = np.stack([128 + 90 * np.sin(columns + 0.3 * c) * np.cos(0.7 * rows - c) for c in range(3)], axis=-1)
    image[100:200, 150:320] = (200, 40, 60)
    image += np.random.default_rng(0).normal(0, 12, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
