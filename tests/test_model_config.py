"""The one model config (lambda_keras/models/model_config.py): round trips, hostile values,
and the lambda layer checking its arguments by the same rules."""

import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lambda_keras import LambdaLayer
from lambda_keras.models import build_model, builder, variants
from lambda_keras.models.model_config import GENERIC, LambdaLayerConfig, ModelConfig, ModelConfigError
from training import config as config_lib
from training.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"architecture": GENERIC, "blocks_per_stage": [1, 1, 1, 1], "lambda_blocks": [[], [1], [], [1]]}
# One config per kind of architecture, with every field the kind takes.
CONFIGS = [
    {**TINY, "base": "tiered", "width_multiplier": 0.5, "se_ratio": [0.25, 0.25, 0.0, 0.0], "dropout_rate": 0.2,
     "norm_epsilon": 1e-3,
     "lambda_layer": {"scope_size": None, "use_content": False, "implementation": "banded"}},
    {"architecture": "HybridResNet50", "placement": "CCLL", "se_ratio": 0.5,
     "lambda_layer": {"intra_depth": 4, "scope_size": 7, "key_normalization": "l2", "query_softmax": True}},
    {"architecture": "LambdaResNet152", "stochastic_depth_rate": 0.1, "norm_momentum": 0.99},
    {"architecture": "ResNetRS50"},
    {"architecture": "LambdaResNet26T", "lambda_layer": {"scope_size": 5}},
]


@pytest.mark.parametrize("values", CONFIGS, ids=lambda values: values["architecture"])
def test_round_trips_through_yaml_and_json(values):
    config = ModelConfig.from_dict(values)
    plain = config.to_dict()
    assert ModelConfig.from_dict(plain) == config
    assert ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(plain))) == config
    assert ModelConfig.from_dict(json.loads(json.dumps(plain))) == config
    assert ModelConfig(**{**values, "lambda_layer": config.lambda_layer}) == config
    assert hash(config) == hash(ModelConfig.from_dict(plain))  # frozen, all tuples


def test_lambda_layer_overrides_resolve_against_the_architecture():
    # timm's layers (2x2 pool, position bias) stay when one field is overridden.
    timm = ModelConfig(architecture="LambdaResNet26T", lambda_layer={"scope_size": 5}).lambda_layer
    assert (timm.scope_size, timm.pool_size, timm.use_position_bias) == (5, 2, True)
    assert ModelConfig(architecture="LambdaResNet50").lambda_layer == LambdaLayerConfig()
    # A LambdaLayerConfig is taken as it is.
    assert ModelConfig(architecture="LambdaResNet26T", lambda_layer=LambdaLayerConfig()).lambda_layer.pool_size == 3
    constructor, positional, options = builder.constructor_arguments(ModelConfig.from_dict(CONFIGS[0]))
    assert constructor.__name__ == GENERIC and positional == ((1, 1, 1, 1), ((), (1,), (), (1,)))
    assert options["lambda_layer"].implementation == "banded" and options["base"] == "tiered"


@pytest.mark.parametrize("override, message", [
    ("model.norm_epsilon=.inf", "Invalid config model: `norm_epsilon` must be a positive finite number. "
                                "Received: norm_epsilon=inf"),
    ("model.norm_momentum=.nan", "`norm_momentum` must be a number in [0, 1). Received: norm_momentum=nan"),
    ("model.se_ratio=[0.1, .nan, 0, 0]", "`se_ratio` must be a number in [0, 1]"),
    ("model.stochastic_depth_rate=-.inf", "model: `stochastic_depth_rate` must be in [0, 1)"),
    ("model.lambda_layer.num_heads=3", "model.lambda_layer: `num_heads` must divide the width"),
    ("model.lambda_layer.use_content=1", "model.lambda_layer: `use_content` must be True or False"),
    ("model.lambda_blocks=[[], [], [1.0], [1]]", "model: `lambda_blocks` for stage c4 must be block indices"),
    ("model.depth=50", "Unknown config key(s) ['model.depth'] in section 'model'"),
])
def test_training_config_reports_non_finite_and_mistyped_values(override, message):
    with pytest.raises(ConfigError) as error:
        config_lib.load_config("demo", [override], **{"input.data_dir": "/data"})
    assert message in str(error.value)


def test_importing_the_config_module_imports_no_keras():
    """The module alone (its package __init__ files, which import the models, left out)."""
    code = (
        "import sys, types\n"
        f"root = {os.path.join(REPO, 'lambda_keras')!r}\n"
        "for name, path in (('lambda_keras', root), ('lambda_keras.models', root + '/models')):\n"
        "    package = types.ModuleType(name); package.__path__ = [path]; sys.modules[name] = package\n"
        "import lambda_keras.models.model_config\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"


# --- hostile values ---------------------------------------------------------------

# Values no field takes, or takes only in some positions: non-finite and huge numbers
# (twice as often), bools for ints and ints for bools, strings, wrong-length lists, mappings.
NON_FINITE_OR_HUGE = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 10**9, 10**400, -(10**9)])
HOSTILE = st.sampled_from(["number", "number", "bool", "int", "float", "text", "list", "mapping"]).flatmap(
    lambda kind: {
        "number": NON_FINITE_OR_HUGE,
        "bool": st.booleans(),
        "int": st.integers(-3, 3),
        "float": st.floats(allow_nan=True, allow_infinity=True),
        "text": st.text(max_size=4),
        "list": st.lists(st.integers(-1, 3), max_size=5),
        "mapping": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    }[kind]
)


def sometimes_hostile(valid):
    """Valid values about three times in four (one_of would pick among HOSTILE's branches)."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda is_valid: valid if is_valid else HOSTILE)


LAMBDA_FIELDS = {
    "key_dim": st.integers(1, 16),
    "num_heads": st.sampled_from([1, 2, 4, 8]),
    "intra_depth": st.integers(1, 3),
    "scope_size": st.sampled_from([None, 1, 3, 5]),
    "use_content": st.booleans(),
    "use_position": st.booleans(),
    "key_normalization": st.sampled_from(["softmax", "l2", "none"]),
    "query_softmax": st.booleans(),
    "use_batch_norm": st.booleans(),
    "implementation": st.sampled_from(["auto", "einsum", "conv", "banded"]),
    "pool_size": st.sampled_from([2, 3]),
    "use_position_bias": st.booleans(),
}
MODEL_FIELDS = {
    "blocks_per_stage": st.just([1, 1, 1, 1]) | st.lists(st.integers(1, 2), min_size=4, max_size=4),
    "lambda_blocks": st.lists(st.lists(st.integers(1, 2), max_size=2), min_size=4, max_size=4),
    "placement": st.text("CL", min_size=4, max_size=4),
    "base": st.sampled_from(["resnet_rs", "vanilla", "tiered"]),
    "width_multiplier": st.sampled_from([0.125, 0.25, 0.5, 1.0, 1.5]) | st.floats(0.01, 20),
    "se_ratio": st.floats(0, 1) | st.lists(st.floats(0, 1), min_size=4, max_size=4),
    "dropout_rate": st.floats(0, 0.99),
    "stochastic_depth_rate": st.floats(0, 0.99),
    "norm_momentum": st.floats(0, 0.999),
    "norm_epsilon": st.floats(1e-6, 1.0),
}
ARCHITECTURES = st.sampled_from([GENERIC, GENERIC, GENERIC, "HybridResNet50", "LambdaResNet50", "ResNetRS50",
                                 "LambdaResNet26RPT256", "LambdaResNet51"])
UNKNOWN_KEYS = st.sampled_from(["depth", "filters", "width"])


@st.composite
def lambda_layer_arguments(draw):
    fields = draw(st.sets(st.sampled_from(sorted(LAMBDA_FIELDS)), max_size=5))
    return {field: draw(sometimes_hostile(LAMBDA_FIELDS[field])) for field in sorted(fields)}


@st.composite
def model_config_values(draw):
    architecture = draw(sometimes_hostile(ARCHITECTURES))
    # The generic factory mostly gets its layout, the others mostly only their own keys.
    wanted = {"blocks_per_stage", "lambda_blocks"} if architecture == GENERIC else set()
    wanted |= {"placement"} if architecture == "HybridResNet50" else set()
    wanted |= {"width_multiplier"} if architecture == GENERIC and draw(st.booleans()) else set()
    keys = {key for key in sorted(wanted) if draw(st.integers(0, 9)) != 5}
    if draw(st.integers(0, 3)) == 2:  # a key another architecture takes
        keys.add(draw(st.sampled_from(["blocks_per_stage", "lambda_blocks", "placement", "base", "width_multiplier"])))
    keys |= draw(st.sets(st.sampled_from(["se_ratio", "dropout_rate", "stochastic_depth_rate", "norm_momentum",
                                          "norm_epsilon"]), max_size=3))
    values = {"architecture": architecture}
    values.update({key: draw(sometimes_hostile(MODEL_FIELDS[key])) for key in sorted(keys)})
    if draw(st.booleans()):
        values["lambda_layer"] = draw(sometimes_hostile(lambda_layer_arguments()))
    if draw(st.integers(0, 19)) == 7:
        values[draw(UNKNOWN_KEYS)] = 1
    return values


# A tiny generic model builds in about a second: a few of the valid configs are built.
_BUILDS = []


def _numbers(plain):
    """The floats in a config's plain data (ints are finite, however large)."""
    if isinstance(plain, dict):
        plain = list(plain.values())
    if isinstance(plain, list):
        return [number for item in plain for number in _numbers(item)]
    return [plain] if isinstance(plain, float) else []


def _small_enough_to_build(config):
    layer = config.lambda_layer
    return (config.architecture == GENERIC and config.blocks_per_stage == (1, 1, 1, 1)
            and (config.width_multiplier or 1) <= 1 and layer.key_dim <= 16 and layer.intra_depth <= 4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example({**TINY, "lambda_layer": {"scope_size": None, "key_normalization": "none", "pool_size": 2}})
@example({**TINY, "se_ratio": 1e-300, "base": "vanilla", "lambda_layer": {"num_heads": 64, "use_content": False}})
@example({"architecture": "LambdaResNet50", "lambda_layer": {"\x1f": 0}})
@given(model_config_values())
def test_a_config_is_rejected_naming_the_key_or_builds(values):
    try:
        config = ModelConfig.from_dict(values)
    except ModelConfigError as error:
        top_level = error.key.split(".")[0]
        assert top_level in values or (values["architecture"] == GENERIC and top_level in MODEL_FIELDS), error.key
        name = error.key.split(".")[-1]
        # A name with control characters is named escaped, as Python writes it in a list.
        assert name in str(error) or repr(name)[1:-1] in str(error), error
        return
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert all(isinstance(value, float) for value in (config.dropout_rate, config.stochastic_depth_rate))
    assert all(math.isfinite(number) for number in _numbers(config.to_dict()))
    if len(_BUILDS) < 3 and _small_enough_to_build(config):
        _BUILDS.append(config)
        model = build_model(config, input_shape=(32, 32, 3), classes=3)
        assert model.output_shape == (None, 3)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*MODEL_FIELDS, *(f"lambda_layer.{field}" for field in LAMBDA_FIELDS)]), HOSTILE)
def test_one_hostile_value_in_a_valid_config_is_named_or_kept_finite(key, value):
    values = {**TINY, "lambda_layer": {}}
    section, _, field = key.rpartition(".")
    (values[section] if section else values)[field] = value
    try:
        config = ModelConfig.from_dict(values)
    except ModelConfigError as error:
        assert error.key == key and f"{field}=" in str(error)  # the key and the value received
        return
    assert all(math.isfinite(number) for number in _numbers(config.to_dict()))
    assert not isinstance(value, bool) or field.startswith("use_") or field == "query_softmax"


def test_every_float_must_be_finite():
    for value in (math.nan, math.inf, -math.inf):
        for key in ("width_multiplier", "se_ratio", "dropout_rate", "stochastic_depth_rate", "norm_momentum",
                    "norm_epsilon"):
            with pytest.raises(ModelConfigError, match=f"Received: {key}=") as error:
                ModelConfig.from_dict({**TINY, key: value})
            assert error.value.key == key
        with pytest.raises(ModelConfigError, match="se_ratio"):
            ModelConfig.from_dict({**TINY, "se_ratio": [0.0, 0.0, value, 0.0]})
        for key in ("norm_momentum", "norm_epsilon"):  # the layer's own batch norms
            with pytest.raises(ValueError, match=f"Received: {key}="):
                LambdaLayer(**{key: value})


def _outcome(make):
    try:
        make()
    except ValueError as error:
        return str(error)
    return None


@settings(max_examples=150, deadline=None)
@given(lambda_layer_arguments())
def test_the_layer_and_the_config_reject_the_same_values(arguments):
    from_config = _outcome(lambda: LambdaLayerConfig(**arguments))
    assert _outcome(lambda: LambdaLayer(**arguments)) == from_config
    in_model = _outcome(lambda: ModelConfig(architecture="LambdaResNet50", lambda_layer=arguments))
    if from_config is not None:
        assert in_model == from_config
    else:  # the one rule a model adds: |h| splits the width of the lambda stages
        assert in_model is None or in_model.startswith("`num_heads` must divide the width")


def test_every_architecture_is_a_valid_config_with_its_defaults():
    for architecture in variants.ARCHITECTURES:
        extra = {"blocks_per_stage": (1, 1, 1, 1), "lambda_blocks": ((), (), (), (1,))}
        extra = extra if architecture == GENERIC else {}
        config = ModelConfig(architecture=architecture, **extra)
        if architecture == "LambdaMobileNetV2":  # no ResNet stages: its blocks are MOBILENET_V2_BLOCKS
            with pytest.raises(ValueError, match="no ResNet stages"):
                config.layout()
            continue
        blocks, lambda_blocks = config.layout()
        assert len(blocks) == len(lambda_blocks) == 4
