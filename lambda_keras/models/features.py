"""Multi-scale features of any model of the family, for detection and segmentation.

Every constructor names the output of a stage's last block ``<stage>_block<n>_out``
(stages c2-c5), so the feature pyramid of a built model is found by name, with plain
Keras. Level ``P<s>`` is stage ``c<s>``, at stride ``2**s`` from the input, as
detectors (KerasHub's ``pyramid_outputs``, FPNs) number them:

| level | stage | stride | channels |
|-------|-------|--------|----------|
| P2    | c2    | 4      | 256      |
| P3    | c3    | 8      | 512      |
| P4    | c4    | 16     | 1024     |
| P5    | c5    | 32     | 2048     |

(The generic factory's ``width_multiplier`` scales the channels.)

Build the model with ``include_top=False, input_shape=(None, None, 3)`` to take any
input size: the local-scope lambda layers (``scope_size`` an odd number, the default)
have no fixed spatial size.
"""

from __future__ import annotations

import re

import keras

PYRAMID_LEVELS = {"P2": "c2", "P3": "c3", "P4": "c4", "P5": "c5"}


def pyramid_layer_names(model: keras.Model) -> dict[str, str]:
    """Level ("P2".."P5") -> name of the layer whose output is that stage's output.

    Raises:
      ValueError: the model has no ``<stage>_block<n>_out`` layers for a stage (it is
        not a model of this family).
    """
    last_blocks: dict[str, int] = {}
    for layer in model.layers:
        match = re.fullmatch(r"(c[2-5])_block(\d+)_out", layer.name)
        if match:
            stage, block = match.group(1), int(match.group(2))
            last_blocks[stage] = max(block, last_blocks.get(stage, 0))
    missing = [stage for stage in PYRAMID_LEVELS.values() if stage not in last_blocks]
    if missing:
        raise ValueError(
            f"Model {model.name!r} has no block outputs for stage(s) {missing} (layers named "
            "'<stage>_block<n>_out'); build it with a constructor of lambda_keras.models."
        )
    return {level: f"{stage}_block{last_blocks[stage]}_out" for level, stage in PYRAMID_LEVELS.items()}


def pyramid_outputs(model: keras.Model) -> dict[str, keras.KerasTensor]:
    """Level -> the symbolic stage output, ``[batch, height / 2**s, width / 2**s, channels]``."""
    return {level: model.get_layer(name).output for level, name in pyramid_layer_names(model).items()}


def feature_extractor(model: keras.Model) -> keras.Model:
    """A model with ``model``'s input (and weights) whose outputs are the P2-P5 features.

    Returns:
      A functional ``keras.Model``: ``[batch, height, width, 3]`` -> ``{"P2": [batch,
      height/4, width/4, 256], ..., "P5": [batch, height/32, width/32, 2048]}``.
    """
    return keras.Model(model.inputs, pyramid_outputs(model), name=f"{model.name}_features")
