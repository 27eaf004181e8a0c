"""Presets of ``LambdaResNetBackbone``: the metadata KerasHub's carry; no built-in ones.

No weights of the paper's models were published and nothing is downloaded, so no preset
names a remote (Kaggle or Hugging Face) handle and ``backbone_presets`` is empty. A
KerasHub built-in entry (``keras_hub/src/models/resnet/resnet_presets.py``) reads::

    "<name>": {
        "metadata": {"description": "...", "params": <count>, "path": "lambda_resnet"},
        "kaggle_handle": "kaggle://<owner>/<model>/keras/<name>/<version>",
    }

Local presets need no entry: ``model.save_to_preset(directory)`` writes one and
``keras_hub.models.ImageClassifier.from_preset(directory)`` (or ``Backbone``) reads it.
Their ``metadata.json`` holds KerasHub's fields (``parameter_count``, versions, tasks)
and the entry's (``description``, ``params``, ``path``), and a classifier's also the
evaluation transform its preprocessor applies (``eval_transform``);
:func:`preset_entry` turns a saved preset into a ``backbone_presets`` entry once its
weights are uploaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from lambda_keras.models.model_config import LambdaLayerConfig, ModelConfig

PRESET_PATH = "lambda_resnet"
METADATA_FILE = "metadata.json"
# What the backbone takes: the input of every LambdaResNet (LambdaResNetImageConverter).
BACKBONE_INPUT = "RGB normalised by the ImageNet mean and standard deviation"

backbone_presets: dict[str, dict] = {}


def describe_backbone(model_config: ModelConfig) -> str:
    """A one-line description of a backbone's model config, as KerasHub's presets have:
    its layout and the lambda layer arguments that differ from `LambdaLayerConfig`'s
    defaults."""
    values = model_config.to_dict()
    parts = [f"{values['architecture']} without its classifier"]
    for key, label in (("blocks_per_stage", "blocks per stage"), ("lambda_blocks", "lambda blocks"),
                       ("width_multiplier", "width multiplier"), ("placement", "placement")):
        if values.get(key) is not None:
            parts.append(f"{label} {values[key]}")
    defaults = dataclasses.asdict(LambdaLayerConfig())
    changed = {key: value for key, value in (values.get("lambda_layer") or {}).items() if defaults.get(key) != value}
    if changed:
        parts.append(f"lambda layer {changed}")
    return f"{', '.join(parts)}; input {BACKBONE_INPUT}. Weights as saved (none were published)."


def eval_transform(image_converter: Any) -> dict[str, Any]:
    """The evaluation transform a ``LambdaResNetImageConverter`` applies, as plain data."""
    size = image_converter.image_size
    return {
        "function": "lambda_keras.data.preprocessing.preprocess_decoded_for_eval",
        "image_size": None if size is None else [int(s) for s in size],
        "crop_padding": int(image_converter.crop_padding),
        "interpolation": image_converter.interpolation,
        "scale": None if image_converter.scale is None else list(image_converter.scale),
        "offset": None if image_converter.offset is None else list(image_converter.offset),
    }


def update_metadata(preset_dir: str | os.PathLike, fields: Mapping[str, Any]) -> None:
    """Adds ``fields`` to the ``metadata.json`` KerasHub wrote in ``preset_dir``."""
    path = os.path.join(preset_dir, METADATA_FILE)
    with open(path) as file:
        metadata = json.load(file)
    metadata.update(fields)
    with open(path, "w") as file:
        file.write(json.dumps(metadata, indent=4))


def preset_entry(preset_dir: str | os.PathLike, kaggle_handle: str) -> dict[str, Any]:
    """The ``backbone_presets`` entry of a saved preset uploaded to ``kaggle_handle``."""
    with open(os.path.join(preset_dir, METADATA_FILE)) as file:
        metadata = json.load(file)
    return {
        "metadata": {key: metadata[key] for key in ("description", "params", "path")},
        "kaggle_handle": kaggle_handle,
    }
