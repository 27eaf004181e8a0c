"""One Keras backend's view of a lambda layer or a small LambdaResNet, in its own process.

The backend is chosen by ``KERAS_BACKEND`` before Keras is imported, so each backend
runs in a process of its own; tests/test_cross_backend.py compares their answers with
the TensorFlow backend's.

    python tests/backend_worker.py gradients CASE.npz OUT.npz [CASE.npz OUT.npz ...]
    python tests/backend_worker.py exchange THEIRS.keras IMAGES.npz OURS.keras OUT.npz
    python tests/backend_worker.py gradients ... exchange ...   (both, in one process)

``exchange`` predicts with a ``.keras`` file saved under another backend, then builds the
small model under this one and saves it, with its predictions, for the other to load.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backend_gradients import loss_gradients  # noqa: E402
from random_weights import randomize  # noqa: E402

from lambda_keras import LambdaLayer, LambdaResNet  # noqa: E402

# Lambda layers in the strided first blocks of c3 (10x10 at a 40x40 input: an uneven
# 'same' pool) and c5 (3x3); ResNet-D shortcut pools on 5x5 and 3x3 (uneven too).
SMALL_MODEL = {"blocks_per_stage": (1, 1, 1, 1), "lambda_blocks": ((), (1,), (), (1,)),
               "input_shape": (40, 40, 3), "classes": 10, "classifier_activation": None}


def small_model() -> keras.Model:
    """The small LambdaResNet above with every weight random (BN statistics included)."""
    keras.utils.set_random_seed(0)
    model = LambdaResNet(**SMALL_MODEL)
    randomize(model, seed=0, scale=0.2)
    return model


def gradients(case_path: str, output_path: str) -> None:
    case = np.load(case_path)
    layer = LambdaLayer.from_config(json.loads(str(case["config"])))
    layer.build(case["inputs"].shape)
    layer.set_weights([case[f"weight_{index}"] for index in range(len(layer.weights))])
    outputs = keras.ops.convert_to_numpy(layer(case["inputs"], training=False))
    grads = loss_gradients(layer, case["inputs"])
    np.savez(output_path, outputs=outputs, **{f"gradient_{i}": g for i, g in enumerate(grads)})


def exchange(theirs_path: str, images_path: str, ours_path: str, output_path: str) -> None:
    images = np.load(images_path)["images"]
    theirs = keras.saving.load_model(theirs_path, safe_mode=True)
    ours = small_model()
    ours.save(ours_path)
    np.savez(output_path, theirs=keras.ops.convert_to_numpy(theirs(images, training=False)),
             ours=keras.ops.convert_to_numpy(ours(images, training=False)))


COMMANDS = ("gradients", "exchange")


def main(*arguments: str) -> None:
    """Runs each command with the paths that follow it, in order."""
    if not arguments or arguments[0] not in COMMANDS:
        raise SystemExit(f"unknown command {arguments[0] if arguments else None!r}: gradients or exchange")
    starts = [index for index, argument in enumerate(arguments) if argument in COMMANDS] + [len(arguments)]
    for start, end in zip(starts, starts[1:]):
        command, paths = arguments[start], arguments[start + 1:end]
        if command == "gradients":
            for case_path, output_path in zip(paths[::2], paths[1::2], strict=True):
                gradients(case_path, output_path)
        else:
            exchange(*paths)
        print(f"{keras.backend.backend()} {command} ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
