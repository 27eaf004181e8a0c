"""Every named constructor builds, with the paper's parameter counts and Table 18 placement.

Parameter counts are trainable weights: what the paper and torchvision count
(BN scale and offset included, BN moving statistics not). Where the paper prints
a count, the test checks it to the printed decimal; every count is also pinned
to the exact integer of the variants table (``lambda_keras/models/variants.py``),
so that an architecture change cannot go unnoticed.

Each test builds its own model, once, in the test process, with its variables left
uninitialised (the checks read only shapes and layer names): ~1.4 ms of Python per Keras
layer, ~25 s for all 30 models on one core. Under pytest-xdist the two workers share the
models out between them, and no model is built twice in a session. The deep models are
marked slow, so the suite's collection order (tests/conftest.py) starts each worker on
them. The C4 and ResNet-RS variants at depths 270 and 350 are not built here (the paper
prints no count for them; their block layouts are those of LambdaResNet270/350, checked
below, and each family's deepest model, 420, is built).
"""

import math

import keras
import pytest

import lambda_keras.models as models
from lambda_keras import LambdaLayer, StochasticDepth
from lambda_keras.models.variants import VARIANTS

# Table 18, copied from the paper (not from MODEL_SPECS): c4 lambda blocks, 1-based.
TABLE_18 = {
    50: ((3, 4, 6, 3), (3,)),
    101: ((3, 4, 23, 3), (6, 12, 18)),
    152: ((3, 8, 36, 3), (5, 10, 15, 20, 25, 30)),
    200: ((3, 24, 36, 3), (5, 10, 15, 20, 25, 30)),
    270: ((4, 29, 53, 4), (8, 16, 24, 32, 40, 48)),
    350: ((4, 36, 72, 4), (10, 20, 30, 40, 50, 60)),
    420: ((4, 44, 87, 4), (10, 20, 30, 40, 50, 60, 70, 80)),
}
SLOW_DEPTHS = (200, 270, 350, 420)
# timm's lambda ResNets (timm/models/byoanet.py, read there, not from variants.py): blocks per
# stage, 1-based lambda blocks per stage (timm's interleave_blocks), and the parameter count
# that timm 1.0.31 reports (sum of timm.create_model(name).parameters()).
TIMM_MODELS = {
    "LambdaResNet26T": ((2, 2, 2, 2), {"c4": [2], "c5": [1, 2]}, 10_958_272),
    "LambdaResNet26RPT256": ((2, 2, 2, 2), {"c4": [2], "c5": [1, 2]}, 10_988_688),
    "LambdaResNet50TS": ((3, 4, 6, 3), {"c3": [4], "c4": [2, 4, 6], "c5": [2]}, 21_536_832),
}
# Their block layouts are LambdaResNet270's and 350's, checked here; the paper prints no count for them.
NOT_BUILT = ("LambdaResNet270C4", "LambdaResNet350C4", "ResNetRS270", "ResNetRS350")

# (constructor, options, exact trainable parameters, the paper's printed millions or None)
CASES = {
    # Tables 3 and 13, vanilla ResNet-50 (the two integers are our counts of the printed 25.6 M and 15.0 M).
    "CCCC": ("HybridResNet50", {"placement": "CCCC"}, 25_557_032, "25.6"),
    "LLLL": ("HybridResNet50", {"placement": "LLLL"}, 14_995_592, "15.0"),
    "LCCC": ("HybridResNet50", {"placement": "LCCC"}, 25_490_744, "25.5"),
    "LLCC": ("HybridResNet50", {"placement": "LLCC"}, 24_992_888, "25.0"),
    "LLLC": ("HybridResNet50", {"placement": "LLLC"}, 21_727_448, "21.7"),
    "CLLL": ("HybridResNet50", {"placement": "CLLL"}, 15_061_880, "15.1"),
    "CCCL": ("HybridResNet50", {"placement": "CCCL"}, 18_825_176, "18.8"),
    # The paper prints 15.4; see HybridResNet50's docstring for why 15.56 is right.
    "CCLL": ("HybridResNet50", {"placement": "CCLL"}, 15_559_736, "15.56"),
    # Table 3 "Lambda layer (|u|=4)": the conv lambda with a 7x7 scope (Appendix E.1).
    "LLLL-u4": ("HybridResNet50", {"placement": "LLLL", "intra_depth": 4, "scope_size": 7}, 16_040_360, "16.04"),
    # Table 14's "wo/ SE" rows.
    "ResNetRS101-noSE": ("ResNetRS101", {"se_ratio": 0}, 44_605_384, "44.6"),
    "ResNetRS152-noSE": ("ResNetRS152", {"se_ratio": 0}, 60_249_032, "60.2"),
}
# Every named model, with its count from the variants table.
CASES.update({
    variant.name: (variant.name, {}, variant.parameters, variant.paper[0] if variant.paper else None)
    for variant in VARIANTS
    if variant.name not in NOT_BUILT
})


def trainable_parameters(model: keras.Model) -> int:
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)


def depth_of(constructor: str) -> int | None:
    """50 for "LambdaResNet50", "ResNetRS50" and "LambdaResNet50C4"; None for HybridResNet50
    and timm's models."""
    if constructor == "HybridResNet50" or constructor in TIMM_MODELS:
        return None
    return int(constructor.split("ResNet")[-1].removeprefix("RS").removesuffix("C4"))


def case_params():
    for case_id, case in CASES.items():
        depth = depth_of(case[0])
        marks = [pytest.mark.slow] if depth in SLOW_DEPTHS else []
        yield pytest.param(case_id, id=case_id, marks=marks)


def lambda_positions(model: keras.Model) -> dict[str, list[int]]:
    """Stage -> sorted block numbers of the LambdaLayers, read from the layer names."""
    positions: dict[str, list[int]] = {}
    for layer in model.layers:
        if isinstance(layer, LambdaLayer):
            stage, block, suffix = layer.name.split("_")
            assert suffix == "lambda" and block.startswith("block")
            positions.setdefault(stage, []).append(int(block[len("block"):]))
    return {stage: sorted(blocks) for stage, blocks in positions.items()}


def blocks_per_stage(model: keras.Model) -> tuple[int, ...]:
    names = {layer.name for layer in model.layers}
    return tuple(
        max(int(name.split("_")[1][len("block"):]) for name in names if name.startswith(f"{stage}_block"))
        for stage in ("c2", "c3", "c4", "c5")
    )


def describe(case_id: str) -> dict:
    """Builds one case and returns what the test checks."""
    constructor, options, _, _ = CASES[case_id]
    # The variables stay uninitialised: the checks need only their shapes, and drawing the
    # initial values takes three quarters of the build time. (A StatelessScope draws them
    # at its exit unless told not to; the uninitialised variables are then listed in
    # Keras's global state until the test's clear_session, tests/conftest.py.)
    with keras.StatelessScope(initialize_variables=False):
        model = getattr(models, constructor)(**options)
    return {
        "input_shape": model.input_shape,
        "output_shape": model.output_shape,
        "count": trainable_parameters(model),
        "blocks": blocks_per_stage(model),
        "lambda_positions": lambda_positions(model),
        "se_stages": {layer.name.split("_")[0] for layer in model.layers if layer.name.endswith("_se_excite")},
        "regularizers": [
            layer.name for layer in model.layers if isinstance(layer, (StochasticDepth, keras.layers.Dropout))
        ],
    }


@pytest.mark.parametrize("case_id", case_params())
def test_constructor(case_id):
    constructor, options, exact, printed = CASES[case_id]
    model = describe(case_id)
    size = 256 if constructor in TIMM_MODELS else 224
    assert model["input_shape"] == (None, size, size, 3) and model["output_shape"] == (None, 1000)

    count = model["count"]
    if printed is not None:
        decimals = len(printed.partition(".")[2])
        assert f"{count / 1e6:.{decimals}f}" == printed
    assert count == exact

    se_stages, positions = model["se_stages"], model["lambda_positions"]
    depth = depth_of(constructor)
    if constructor in TIMM_MODELS:
        blocks, lambda_blocks, timm_count = TIMM_MODELS[constructor]
        assert count == timm_count
        assert model["blocks"] == blocks and positions == lambda_blocks
        assert se_stages == set()
    elif constructor.startswith("LambdaResNet"):
        blocks, c4_lambdas = TABLE_18[depth]
        assert model["blocks"] == blocks
        c4 = list(range(1, blocks[2] + 1)) if constructor.endswith("C4") else list(c4_lambdas)
        assert positions == {"c4": c4, "c5": list(range(1, blocks[3] + 1))}
        assert se_stages == {"c2", "c3"}
    elif constructor.startswith("ResNetRS"):
        assert model["blocks"] == TABLE_18[depth][0]
        assert positions == {}
        assert se_stages == ({"c2", "c3", "c4", "c5"} if options.get("se_ratio", 0.25) else set())
    else:
        assert model["blocks"] == (3, 4, 6, 3)
        expected = {
            stage: list(range(1, n + 1))
            for stage, n, choice in zip(("c2", "c3", "c4", "c5"), (3, 4, 6, 3), options["placement"])
            if choice == "L"
        }
        assert positions == expected
        assert se_stages == set()
    # No regularisation unless asked for (Table 20 sets it per image size).
    assert model["regularizers"] == []
