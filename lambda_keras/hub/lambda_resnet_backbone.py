"""``LambdaResNetBackbone``: any model of the family as a KerasHub feature-pyramid backbone.

The backbone is the model ``lambda_keras.models.build_model`` builds from a model config
(a named variant, ``HybridResNet50`` with a placement, or the generic factory with its
block layout), without the classifier: ``[batch, height, width, 3]`` images normalised as
in :func:`lambda_keras.imagenet_utils.preprocess_input` go in, the c5 features ``[batch,
height / 32, width / 32, 2048]`` (times a generic config's ``width_multiplier``) come
out, and ``pyramid_outputs`` holds the stage outputs P2-P5 (level ``P<s>`` at stride
``2**s``, see ``lambda_keras.models.features``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import keras_hub

from lambda_keras.hub.lambda_resnet_presets import PRESET_PATH, describe_backbone, update_metadata
from lambda_keras.models.builder import build_model
from lambda_keras.models.features import pyramid_outputs
from lambda_keras.models.model_config import LambdaLayerConfig, ModelConfig

# A model config's keys a ResNet backbone has no argument for: the classifier's dropout
# (a backbone has no classifier) and LambdaMobileNetV2's width multiplier.
_NOT_BACKBONE_KEYS = ("dropout_rate", "alpha")


@keras.saving.register_keras_serializable(package="lambda_keras")
class LambdaResNetBackbone(keras_hub.models.FeaturePyramidBackbone):
    """A LambdaResNet, HybridResNet50 or ResNet-RS without its classifier, for KerasHub.

    Input ``[batch, height, width, 3]``, RGB normalised by the ImageNet mean and standard
    deviation (``LambdaResNetImageConverter`` does it); output the c5 features ``[batch,
    height / 32, width / 32, 2048]``. ``pyramid_outputs`` maps "P2".."P5" to the c2..c5
    outputs ``[batch, height / 2**s, width / 2**s, 64 * 2**s]``; a generic config's
    ``width_multiplier`` scales both channel counts.

    Args:
      architecture: a constructor of ``lambda_keras.models`` by name
        (``lambda_keras.models.variants.ARCHITECTURES``): "LambdaResNet50", ...,
        "ResNetRS50", ..., "HybridResNet50" or the generic factory "LambdaResNet".
      blocks_per_stage, lambda_blocks, base, width_multiplier: the generic factory's
        block layout, base and stage widths.
      placement: HybridResNet50's "C"/"L" per stage.
      activation, se_ratio, stochastic_depth_rate, norm_momentum, norm_epsilon: the
        constructors' options of the same names.
      lambda_layer: the lambda layers' arguments, a ``LambdaLayerConfig`` or overrides
        of the architecture's, e.g. ``{"scope_size": 7}``.
      image_shape: ``(height, width, 3)``; ``None`` entries take any size, which the
        local-scope lambda layers (an odd ``scope_size``, the default 23) allow.
      dtype: dtype policy of the layers, e.g. "mixed_bfloat16"; None: Keras' global one.
      **kwargs: ``name`` and ``trainable``, as for any KerasHub backbone.

    The fields are a ``ModelConfig``'s (less its classifier dropout), which
    ``get_config`` stores as ``ModelConfig.to_dict`` writes them.

    Raises:
      ModelConfigError: an invalid model config (a ``ValueError``), naming the key.
    """

    def __init__(
        self,
        architecture: str,
        blocks_per_stage: Sequence[int] | None = None,
        lambda_blocks: Sequence[Sequence[int]] | None = None,
        base: str | None = None,
        width_multiplier: float | None = None,
        placement: str | None = None,
        activation: str | None = None,
        se_ratio: float | Sequence[float] | None = None,
        stochastic_depth_rate: float | None = None,
        norm_momentum: float | None = None,
        norm_epsilon: float | None = None,
        lambda_layer: LambdaLayerConfig | Mapping[str, Any] | None = None,
        image_shape: Sequence[int | None] = (None, None, 3),
        dtype: str | keras.DTypePolicy | None = None,
        **kwargs: Any,
    ):
        # None: the constructor's default, as in any model config.
        model_config = ModelConfig.from_dict({
            "architecture": architecture, "blocks_per_stage": blocks_per_stage, "lambda_blocks": lambda_blocks,
            "base": base, "width_multiplier": width_multiplier, "placement": placement, "se_ratio": se_ratio,
            "stochastic_depth_rate": stochastic_depth_rate,
            "norm_momentum": norm_momentum, "norm_epsilon": norm_epsilon, "lambda_layer": lambda_layer,
            "activation": activation,
        })
        image_shape = tuple(image_shape)
        # No default name: Keras names the model after its class ("lambda_res_net_backbone",
        # as KerasHub's ResNetBackbone is "res_net_backbone"). Presets saved with the earlier
        # default, "lambda_resnet_backbone", keep that name in their config and load as before.
        # === Functional model: the builder's graph, without the classifier ===
        network = build_model(model_config, input_shape=image_shape, include_top=False, dtype_policy=dtype)
        levels = pyramid_outputs(network)
        super().__init__(inputs=network.inputs[0], outputs=network.outputs[0], dtype=dtype, **kwargs)

        # === Config ===
        self.model_config = model_config
        self.image_shape = image_shape
        self.data_format = keras.config.image_data_format()
        self.pyramid_outputs = levels

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        model_config = self.model_config.to_dict()
        for key in _NOT_BACKBONE_KEYS:
            del model_config[key]
        config.update(model_config)
        config["image_shape"] = self.image_shape
        return config

    def save_to_preset(self, preset_dir: str | os.PathLike, max_shard_size: int | float | None = 10) -> None:
        """Writes ``config.json``, ``model.weights.h5`` and ``metadata.json`` to ``preset_dir``.

        ``metadata.json`` holds KerasHub's fields and a KerasHub preset entry's
        (``description``, ``params``, ``path``; see ``lambda_resnet_presets``). The
        directory appears complete or not at all (see :func:`staged_preset_dir`).
        """
        with staged_preset_dir(preset_dir) as staging:
            super().save_to_preset(staging, max_shard_size=max_shard_size)
            update_metadata(staging, {
                "description": describe_backbone(self.model_config),
                "params": self.count_params(),
                "path": PRESET_PATH,
            })


# Directories this process is filling with a preset right now: a task's save writes its
# backbone into the task's staging directory, which must not be staged again.
_STAGING_DIRS: set[str] = set()


@contextlib.contextmanager
def staged_preset_dir(preset_dir: str | os.PathLike) -> Iterator[str]:
    """Yields a directory to write a preset into, renamed to ``preset_dir`` when complete.

    KerasHub writes a preset file by file; staging it in a sibling directory and renaming
    that (atomic on one filesystem) means a reader never sees half a preset, and a failed
    save leaves nothing behind. Inside a staging directory (a task saving its backbone),
    it yields that directory itself.

    Raises:
      FileExistsError: ``preset_dir`` already holds files (a preset is never overwritten).
    """
    target = os.path.realpath(preset_dir)
    if target in _STAGING_DIRS:
        yield target
        return
    path = Path(target)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"Preset directory {str(preset_dir)!r} already exists and is not empty; "
                              "choose a new directory (a preset is never overwritten).")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent)
    _STAGING_DIRS.add(staging)
    try:
        yield staging
        # An empty target directory is replaced; another writer's files make this fail.
        os.rename(staging, target)
    finally:
        _STAGING_DIRS.discard(staging)
        shutil.rmtree(staging, ignore_errors=True)
