"""The table of named models: one row per constructor, the only place a variant is listed.

The constructors in ``lambda_resnet.py``, the package's ``__all__``, the constructor
docstrings, the training config's allowed architectures and the parameter-count test
are all derived from :data:`VARIANTS`. Adding a variant is a row here, a constructor
function there and the test's expectation.

Pure data: importing this module does not import Keras.
"""

from __future__ import annotations

import dataclasses

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
FAMILIES = (LAMBDA, LAMBDA_C4, RESNET_RS)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One named model.

    name: the constructor's name (``lambda_keras.models.<name>``).
    family: one of FAMILIES.
    depth: a key of MODEL_SPECS.
    parameters: trainable parameters with the default options and 1000 classes
      (BN scale and offset counted, moving statistics not: what the paper counts).
    paper: the count the paper prints, in millions as printed, and where
      (``("36.9", "Table 14")``); None where it prints none.
    """

    name: str
    family: str
    depth: int
    parameters: int
    paper: tuple[str, str] | None = None


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
)
VARIANTS_BY_NAME: dict[str, Variant] = {variant.name: variant for variant in VARIANTS}

# The constructors that are not rows: the generic factory and the Section 5.1 study.
FACTORIES = ("LambdaResNet", "HybridResNet50")
# Every constructor a training config may name.
ARCHITECTURES: tuple[str, ...] = FACTORIES + tuple(VARIANTS_BY_NAME)
