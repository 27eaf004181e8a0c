"""The table of named models: one row per constructor, the only place a variant is listed.

The constructors in ``lambda_resnet.py``, the package's ``__all__``, the constructor
docstrings, the training config's allowed architectures and the parameter-count test
are all derived from :data:`VARIANTS`. Adding a variant is a row here, a constructor
function there and the test's expectation.

Pure data: importing this module does not import Keras.
"""

from __future__ import annotations

import dataclasses
import math

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

# The families of named models and what a row of each builds.
LAMBDA = "lambda"  # Table 18: lambda layers in the listed c4 blocks and all of c5
LAMBDA_C4 = "lambda_c4"  # Table 14's "-C4": lambda layers in every c4 and c5 block
RESNET_RS = "resnet_rs"  # the conv-only ResNet-RS baselines, SE 0.25 everywhere
TIMM = "timm"  # timm's lambda ResNets (timm/models/byoanet.py), for its ImageNet weights
FAMILIES = (LAMBDA, LAMBDA_C4, RESNET_RS, TIMM)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """How evaluation images are made from RGB images of any size, before the
    ImageNet mean/std normalisation that every model shares.

    image_size: the model's input height and width.
    crop_padding: the centre crop keeps ``image_size / (image_size + crop_padding)``
      of the shorter side.
    interpolation: "bilinear" (the paper's recipe) or "bicubic" (timm's).
    resize_first: False: crop, then resize the crop to ``image_size`` (the TPU ResNet
      recipe); True: resize the shorter side to ``image_size + crop_padding``
      (antialiased), then crop ``image_size`` from the centre (timm's, torchvision's
      ``Resize`` then ``CenterCrop``).
    """

    image_size: int
    crop_padding: int
    interpolation: str = "bilinear"
    resize_first: bool = False


def timm_eval_transform(image_size: int, crop_pct: float) -> EvalTransform:
    """timm's evaluation transform: shorter side to ``floor(image_size / crop_pct)``,
    bicubic, then the centre ``image_size`` square."""
    return EvalTransform(image_size, math.floor(image_size / crop_pct) - image_size, "bicubic", resize_first=True)


@dataclasses.dataclass(frozen=True)
class TimmSpec:
    """What a timm-family row builds and where its weights come from.

    model: timm's model name (``timm.create_model``), also the checkpoint layout the
      converter reads.
    pretrained: the Hugging Face hub repository of the ImageNet weights (``timm/<tag>``).
    top1: the ImageNet-1k top-1 timm reports for them, at 256.
    blocks: blocks per stage c2-c5.
    lambda_blocks: per stage, the 1-based blocks with a lambda layer (timm's
      ``interleave_blocks``: every second block from the second, or only the last
      when ``every`` exceeds the depth).
    activation: "relu" or "silu".
    scope_size: the lambda layers' local scope ``r``, or None for global relative
      position embeddings (a fixed input size).
    crop_pct: timm's evaluation crop fraction (``pretrained_cfg["crop_pct"]``).
    """

    model: str
    pretrained: str
    top1: str
    blocks: tuple[int, ...]
    lambda_blocks: tuple[tuple[int, ...], ...]
    activation: str
    scope_size: int | None
    crop_pct: float
    image_size: int = 256


@dataclasses.dataclass(frozen=True)
class Variant:
    """One named model.

    name: the constructor's name (``lambda_keras.models.<name>``).
    family: one of FAMILIES.
    depth: the layer count; a key of MODEL_SPECS except in the timm family.
    parameters: trainable parameters with the default options and 1000 classes
      (BN scale and offset counted, moving statistics not: what the paper counts;
      for the timm family, the count of ``timm.create_model``'s parameters).
    paper: the count the paper prints, in millions as printed, and where
      (``("36.9", "Table 14")``); None where it prints none.
    timm: the timm family's architecture and weights; None for the paper's models.
    """

    name: str
    family: str
    depth: int
    parameters: int
    paper: tuple[str, str] | None = None
    timm: TimmSpec | None = None

    @property
    def eval_transform(self) -> EvalTransform | None:
        """The evaluation transform of the model's published weights; None for the
        paper's models (none published: the training config's transform applies)."""
        if self.timm is None:
            return None
        return timm_eval_transform(self.timm.image_size, self.timm.crop_pct)


VARIANTS: tuple[Variant, ...] = (
    Variant("LambdaResNet50", LAMBDA, 50, 18_963_272),
    Variant("LambdaResNet101", LAMBDA, 101, 36_866_920, ("36.9", "Table 14")),
    Variant("LambdaResNet152", LAMBDA, 152, 51_404_696, ("51.4", "Table 14")),
    Variant("LambdaResNet200", LAMBDA, 200, 57_993_112),
    Variant("LambdaResNet270", LAMBDA, 270, 81_366_248),
    Variant("LambdaResNet350", LAMBDA, 350, 105_475_176),
    Variant("LambdaResNet420", LAMBDA, 420, 124_438_664),
    Variant("LambdaResNet101C4", LAMBDA_C4, 101, 25_982_120, ("26.0", "Table 14")),
    Variant("LambdaResNet152C4", LAMBDA_C4, 152, 35_077_496, ("35.1", "Table 14")),
    Variant("LambdaResNet200C4", LAMBDA_C4, 200, 41_665_912, ("42", "Table 15")),
    Variant("LambdaResNet270C4", LAMBDA_C4, 270, 55_786_968),
    Variant("LambdaResNet350C4", LAMBDA_C4, 350, 69_555_336),
    Variant("LambdaResNet420C4", LAMBDA_C4, 420, 81_443_704),
    Variant("ResNetRS50", RESNET_RS, 50, 35_691_912),
    Variant("ResNetRS101", RESNET_RS, 101, 63_618_696, ("63.6", "Table 14")),
    Variant("ResNetRS152", RESNET_RS, 152, 86_621_576, ("86.6", "Table 14")),
    Variant("ResNetRS200", RESNET_RS, 200, 93_209_992),
    Variant("ResNetRS270", RESNET_RS, 270, 129_861_448),
    Variant("ResNetRS350", RESNET_RS, 350, 163_956_168),
    Variant("ResNetRS420", RESNET_RS, 420, 191_891_656),
    # timm 1.0.31 (byoanet.py); the counts are timm's, measured with timm.create_model.
    Variant("LambdaResNet26T", TIMM, 26, 10_958_272, timm=TimmSpec(
        "lambda_resnet26t", "timm/lambda_resnet26t.c1_in1k", "79.13",
        blocks=(2, 2, 2, 2), lambda_blocks=((), (), (2,), (1, 2)), activation="relu", scope_size=9,
        crop_pct=0.94)),
    Variant("LambdaResNet26RPT256", TIMM, 26, 10_988_688, timm=TimmSpec(
        "lambda_resnet26rpt_256", "timm/lambda_resnet26rpt_256.c1_in1k", "78.96",
        blocks=(2, 2, 2, 2), lambda_blocks=((), (), (2,), (1, 2)), activation="relu", scope_size=None,
        crop_pct=0.94)),
    Variant("LambdaResNet50TS", TIMM, 50, 21_536_832, timm=TimmSpec(
        "lambda_resnet50ts", "timm/lambda_resnet50ts.a1h_in1k", "81.18",
        blocks=(3, 4, 6, 3), lambda_blocks=((), (4,), (2, 4, 6), (2,)), activation="silu", scope_size=9,
        crop_pct=0.95)),
)
VARIANTS_BY_NAME: dict[str, Variant] = {variant.name: variant for variant in VARIANTS}
# timm's model name -> our row, for the converter; also the rows' default model names.
TIMM_VARIANTS: dict[str, Variant] = {variant.timm.model: variant for variant in VARIANTS if variant.timm}


def published_eval_transform(model_name: str) -> EvalTransform | None:
    """The evaluation transform of the published weights of a model named
    ``model_name`` (a timm row's constructor names its model after timm's); None for
    any other name."""
    variant = TIMM_VARIANTS.get(model_name)
    return variant.eval_transform if variant else None

# The constructors that are not rows: the generic factory and the Section 5.1 study.
FACTORIES = ("LambdaResNet", "HybridResNet50")
# Every constructor a training config may name.
ARCHITECTURES: tuple[str, ...] = FACTORIES + tuple(VARIANTS_BY_NAME)
