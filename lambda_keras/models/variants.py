"""The named models as data: one complete ``ModelConfig`` per constructor, and apart from
them the facts of published weights.

As timm separates its architectures (``model_cfgs`` in ``byobnet.py``) from its
pretrained tags (``default_cfgs``), :data:`VARIANTS` holds what each named constructor
builds, a complete generic config made by one of the helpers below (Table 18's depths,
Table 14's -C4, the ResNet-RS baselines, timm's layouts) with its parameter count, and
:data:`PRETRAINED` the ImageNet weights that exist for some of them (timm's tag, top-1,
evaluation transform). The named constructors (``constructors.py``), the package's
``__all__``, the constructor docstrings, the training config's allowed architectures
and the parameter-count test all follow from these tables.

Adding a variant is a row of :data:`VARIANTS` (and of :data:`PRETRAINED` if weights
exist), a thin constructor in ``constructors.py`` and the test's expectation.

Pure data: importing this module does not import Keras.
"""

from __future__ import annotations

import dataclasses

from lambda_keras.data.preprocessing import EvalTransform, timm_eval_transform
from lambda_keras.models.model_config import (
    FACTORIES,
    GENERIC,
    LambdaLayerConfig,
    ModelConfig,
)

# Table 18: blocks per stage c2-c5 and the (1-based) c4 blocks with a lambda layer;
# every c5 block has one too. The block counts are ResNet-RS's (``model_params`` in
# [RS]), so the ResNetRS baselines share this table.
MODEL_SPECS: dict[int, dict[str, tuple[int, ...]]] = {
    50: {"blocks": (3, 4, 6, 3), "c4_lambda_blocks": (3,)},
    101: {"blocks": (3, 4, 23, 3), "c4_lambda_blocks": (6, 12, 18)},
    152: {"blocks": (3, 8, 36, 3), "c4_lambda_blocks": (5, 10, 15, 20, 25, 30)},
    200: {"blocks": (3, 24, 36, 3), "c4_lambda_blocks": (5, 10, 15, 20, 25, 30)},
    270: {"blocks": (4, 29, 53, 4), "c4_lambda_blocks": (8, 16, 24, 32, 40, 48)},
    350: {"blocks": (4, 36, 72, 4), "c4_lambda_blocks": (10, 20, 30, 40, 50, 60)},
    420: {"blocks": (4, 44, 87, 4), "c4_lambda_blocks": (10, 20, 30, 40, 50, 60, 70, 80)},
}
# Vanilla ResNet-50 stage sizes (He et al. 2016), the network of Tables 3, 9-13.
RESNET50_BLOCKS = (3, 4, 6, 3)
# SE sits in the c2/c3 conv blocks of the LambdaResNets only: the published sizes match
# only without SE in c4/c5 (docs/design.md, "SE only in c2 and c3").
LAMBDA_RESNET_SE_RATIO = (0.25, 0.25, 0.0, 0.0)
NO_LAMBDA_BLOCKS = ((), (), (), ())


def _every_block(num_blocks: int) -> tuple[int, ...]:
    return tuple(range(1, num_blocks + 1))


def _config(
    blocks: tuple[int, ...],
    lambda_blocks: tuple[tuple[int, ...], ...],
    base: str,
    se_ratio: float | tuple[float, ...],
    activation: str = "relu",
    lambda_layer: LambdaLayerConfig | None = None,
) -> ModelConfig:
    """A complete generic config: every option set, batch norms at [RS]'s 0.9 and 1e-5."""
    return ModelConfig(
        GENERIC, blocks_per_stage=blocks, lambda_blocks=lambda_blocks, base=base, activation=activation,
        se_ratio=se_ratio, norm_momentum=0.9, norm_epsilon=1e-5, lambda_layer=lambda_layer or LambdaLayerConfig(),
    )


def table18_config(depth: int) -> ModelConfig:
    """LambdaResNet-<depth> (Table 18): ResNet-RS base, lambda layers in the listed c4
    blocks and every c5 block, SE 0.25 in c2/c3."""
    spec = MODEL_SPECS[depth]
    blocks = spec["blocks"]
    lambda_blocks = ((), (), spec["c4_lambda_blocks"], _every_block(blocks[3]))
    return _config(blocks, lambda_blocks, "resnet_rs", LAMBDA_RESNET_SE_RATIO)


def c4_config(depth: int) -> ModelConfig:
    """LambdaResNet-<depth>-C4 (Table 14): Table 18's network with a lambda layer in
    every c4 and c5 block."""
    blocks = MODEL_SPECS[depth]["blocks"]
    lambda_blocks = ((), (), _every_block(blocks[2]), _every_block(blocks[3]))
    return _config(blocks, lambda_blocks, "resnet_rs", LAMBDA_RESNET_SE_RATIO)


def resnet_rs_config(depth: int) -> ModelConfig:
    """ResNet-RS-<depth>, the conv baseline of Table 14: no lambda layers, SE 0.25 in
    every stage (``se_ratio=0`` gives Table 14's "wo/ SE" rows)."""
    return _config(MODEL_SPECS[depth]["blocks"], NO_LAMBDA_BLOCKS, "resnet_rs", 0.25)


def hybrid_config(placement: str) -> ModelConfig:
    """HybridResNet50 (Section 5.1): vanilla ResNet-50, no SE, with lambda layers in
    every block of the stages ``placement`` marks "L" (one character per c2-c5)."""
    lambda_blocks = tuple(
        _every_block(num_blocks) if choice == "L" else () for choice, num_blocks in zip(placement, RESNET50_BLOCKS)
    )
    return _config(RESNET50_BLOCKS, lambda_blocks, "vanilla", 0.0)


def timm_config(
    blocks: tuple[int, ...], lambda_blocks: tuple[tuple[int, ...], ...], activation: str, scope_size: int | None
) -> ModelConfig:
    """One of timm's lambda ResNets (``timm/models/byoanet.py``): tiered stem, strided 1x1
    projection shortcuts, no SE; lambda layers with timm's 2x2 pool and, with a local
    scope ``scope_size``, a bias on the position lambdas (|k| 16, |h| 4, |u| 1 as in the
    paper). ``lambda_blocks`` are timm's ``interleave_blocks``, 1-based."""
    lambda_layer = LambdaLayerConfig(scope_size=scope_size, pool_size=2, use_position_bias=scope_size is not None)
    return _config(blocks, lambda_blocks, "tiered", 0.0, activation, lambda_layer)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One named model.

    name: the constructor's name (``lambda_keras.models.<name>``).
    config: the complete generic config it builds by default.
    parameters: trainable parameters with the default options and 1000 classes
      (BN scale and offset counted, moving statistics not: what the paper counts;
      for timm's rows, the count of ``timm.create_model``'s parameters).
    paper: the count the paper prints, in millions as printed, and where
      (``("36.9", "Table 14")``); None where it prints none.
    image_size: the input height and width without an ``input_shape``: with the
      classifier, and also without it when the lambda layers have global position
      embeddings (``scope_size`` None), which fix the size.
    """

    name: str
    config: ModelConfig
    parameters: int
    paper: tuple[str, str] | None = None
    image_size: int = 224


VARIANTS: tuple[Variant, ...] = (
    Variant("LambdaResNet50", table18_config(50), 18_963_272),
    Variant("LambdaResNet101", table18_config(101), 36_866_920, ("36.9", "Table 14")),
    Variant("LambdaResNet152", table18_config(152), 51_404_696, ("51.4", "Table 14")),
    Variant("LambdaResNet200", table18_config(200), 57_993_112),
    Variant("LambdaResNet270", table18_config(270), 81_366_248),
    Variant("LambdaResNet350", table18_config(350), 105_475_176),
    Variant("LambdaResNet420", table18_config(420), 124_438_664),
    Variant("LambdaResNet101C4", c4_config(101), 25_982_120, ("26.0", "Table 14")),
    Variant("LambdaResNet152C4", c4_config(152), 35_077_496, ("35.1", "Table 14")),
    Variant("LambdaResNet200C4", c4_config(200), 41_665_912, ("42", "Table 15")),
    Variant("LambdaResNet270C4", c4_config(270), 55_786_968),
    Variant("LambdaResNet350C4", c4_config(350), 69_555_336),
    Variant("LambdaResNet420C4", c4_config(420), 81_443_704),
    Variant("ResNetRS50", resnet_rs_config(50), 35_691_912),
    Variant("ResNetRS101", resnet_rs_config(101), 63_618_696, ("63.6", "Table 14")),
    Variant("ResNetRS152", resnet_rs_config(152), 86_621_576, ("86.6", "Table 14")),
    Variant("ResNetRS200", resnet_rs_config(200), 93_209_992),
    Variant("ResNetRS270", resnet_rs_config(270), 129_861_448),
    Variant("ResNetRS350", resnet_rs_config(350), 163_956_168),
    Variant("ResNetRS420", resnet_rs_config(420), 191_891_656),
    # timm 1.0.31 (byoanet.py); the counts are timm's, measured with timm.create_model.
    Variant("LambdaResNet26T", timm_config((2, 2, 2, 2), ((), (), (2,), (1, 2)), "relu", scope_size=9),
            10_958_272, image_size=256),
    Variant("LambdaResNet26RPT256", timm_config((2, 2, 2, 2), ((), (), (2,), (1, 2)), "relu", scope_size=None),
            10_988_688, image_size=256),
    Variant("LambdaResNet50TS", timm_config((3, 4, 6, 3), ((), (4,), (2, 4, 6), (2,)), "silu", scope_size=9),
            21_536_832, image_size=256),
)
VARIANTS_BY_NAME: dict[str, Variant] = {variant.name: variant for variant in VARIANTS}
# Constructor name -> the complete config it builds by default.
VARIANT_CONFIGS: dict[str, ModelConfig] = {variant.name: variant.config for variant in VARIANTS}
# Every constructor a training config may name.
ARCHITECTURES: tuple[str, ...] = FACTORIES + tuple(VARIANTS_BY_NAME)

# LambdaMobileNetV2 (Appendix D.3.2) is a factory, not a row: its width multiplier
# ``alpha`` scales every block. Its blocks are keras.applications.MobileNetV2's (Sandler
# et al. 2018, Table 2): per group, expansion t, output channels c (times alpha),
# repeats n and the first block's stride s; 17 inverted bottlenecks in all.
MOBILENET_V2_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# "Replace the 10th and 16th inverted bottlenecks" (Appendix D.3.2), counted from 1 over
# the 17: Keras' block_9 (64 -> 64 channels at 1/16 of the input) and block_15
# (160 -> 160 at 1/32). docs/design.md, "LambdaMobileNetV2: reading Appendix D.3.2".
MOBILENET_V2_LAMBDA_BLOCKS: tuple[int, ...] = (10, 16)
# Trainable parameters at alpha 1.0 with 1000 classes (BN scale and offset counted).
MOBILENET_V2_PARAMETERS = 3_206_680
MOBILENET_V2_PAPER = ("3.21", "Table 17")
# keras.applications.MobileNetV2(weights=None)'s, Table 17's "3.50" for the plain network.
KERAS_MOBILENET_V2_PARAMETERS = 3_504_872


@dataclasses.dataclass(frozen=True)
class TimmSpec:
    """Published ImageNet weights of a named model: timm's (its ``default_cfgs``).

    model: timm's model name (``timm.create_model``), also the checkpoint layout the
      converter reads and the constructor's default model name.
    pretrained: the Hugging Face hub repository of the weights (``timm/<tag>``).
    top1: the ImageNet-1k top-1 timm reports for them, at ``image_size``.
    crop_pct: timm's evaluation crop fraction (``pretrained_cfg["crop_pct"]``).
    image_size: the evaluation input size.
    """

    model: str
    pretrained: str
    top1: str
    crop_pct: float
    image_size: int = 256

    @property
    def eval_transform(self) -> EvalTransform:
        """The evaluation transform the published top-1 was measured with."""
        return timm_eval_transform(self.image_size, self.crop_pct)


# Constructor name -> its published weights; the paper's models have none.
PRETRAINED: dict[str, TimmSpec] = {
    "LambdaResNet26T": TimmSpec("lambda_resnet26t", "timm/lambda_resnet26t.c1_in1k", "79.13", crop_pct=0.94),
    "LambdaResNet26RPT256": TimmSpec("lambda_resnet26rpt_256", "timm/lambda_resnet26rpt_256.c1_in1k", "78.96",
                                     crop_pct=0.94),
    "LambdaResNet50TS": TimmSpec("lambda_resnet50ts", "timm/lambda_resnet50ts.a1h_in1k", "81.18", crop_pct=0.95),
}
# timm's model name -> our row, for the converter; also the rows' default model names.
TIMM_VARIANTS: dict[str, Variant] = {spec.model: VARIANTS_BY_NAME[name] for name, spec in PRETRAINED.items()}


def published_eval_transform(model_name: str) -> EvalTransform | None:
    """The evaluation transform of the published weights of a model named
    ``model_name`` (a timm row's constructor names its model after timm's); None for
    any other name."""
    variant = TIMM_VARIANTS.get(model_name)
    return PRETRAINED[variant.name].eval_transform if variant else None
