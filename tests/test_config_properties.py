"""Property-based tests of the config boundary: any value a user can write is either
refused in one line naming its key, or is the value the run uses, finite.

Hypothesis draws the key (every numeric, boolean and string field of the train, input
and runtime sections) and the value (hostile ones included: NaN, infinities, huge,
negative, booleans for numbers, strings, lists, unicode), writes it as the user would
(`--set key=TEXT` or a YAML file) and checks the invariant; the command line is checked
the same way through `training.train.main`, which must refuse before it creates
anything.
"""

import dataclasses
import math
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training import config as config_lib
from training import train
from training.config import ConfigError
from training.input_config import InputConfig

SECTIONS = {"train": config_lib.TrainConfig, "input": InputConfig, "runtime": config_lib.RuntimeConfig}
KEYS = sorted(f"{section}.{field.name}" for section, cls in SECTIONS.items() for field in dataclasses.fields(cls))
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What a user may type after `key=`: YAML scalars and lists, hostile ones first.
HOSTILE_TEXTS = [".nan", ".inf", "-.inf", "1e400", "-1e400", "1e30", "nan", "inf", "1e-4", "1E+3", "-0.0", "0", "-1",
                 "9223372036854775808", "-9223372036854775809", "4294967296", "99999999999", "true", "false",
                 "null", "[]", "[1, 2]", "[0.5, .nan]", "{}", "'3'", "三", "a b", "''", "0x10", "1_000"]
VALUE_TEXTS = st.one_of(
    st.sampled_from(HOSTILE_TEXTS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.integers(min_value=-3, max_value=40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: yaml.safe_dump(x).split("\n")[0]),
    st.floats(min_value=-10, max_value=10).map(lambda x: f"{x:e}"),
    st.text(max_size=8).map(lambda text: yaml.safe_dump(text, default_flow_style=True).split("\n")[0]),
)


def _numbers(value):
    if isinstance(value, (tuple, list)):
        return [number for item in value for number in _numbers(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _demo(*overrides, path="demo"):
    return config_lib.load_config(path, overrides, **{"model_dir": "/tmp/unused"})


@PROPERTY_SETTINGS
@given(key=st.sampled_from(KEYS), text=VALUE_TEXTS)
def test_any_set_value_is_refused_naming_its_key_or_used_as_given(key, text):
    section, name = key.split(".")
    try:
        config = _demo(f"{key}={text}")
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message
        assert key in message, message
        return
    value = getattr(getattr(config, section), name)
    expected = config_lib.load_yaml(text)
    if isinstance(expected, list):
        expected = tuple(expected)
    assert value == expected or (isinstance(value, tuple) and value == tuple(float(item) for item in expected))
    assert all(math.isfinite(number) and (isinstance(number, float) or abs(number) < 2**63)
               for number in _numbers(value)), (key, value)
    # What is saved as config.yaml reads back as the same config.
    assert config_lib.from_dict(config_lib.load_yaml(config.to_yaml())) == config


def _hint(key):
    section, name = key.split(".")
    return typing.get_type_hints(SECTIONS[section])[name]


NUMERIC_KEYS = [key for key in KEYS if _hint(key) in (float, int, typing.Optional[int], typing.Optional[float])]


@PROPERTY_SETTINGS
@given(key=st.sampled_from(NUMERIC_KEYS), value=st.sampled_from([math.nan, math.inf, -math.inf, 2**64, -(2**64)]))
def test_no_non_finite_or_out_of_range_number_reaches_a_run(key, value):
    """NaN and infinities, anywhere; integers beyond 64 bits where an integer is read
    (a float key takes 2**64 as the finite number it is)."""
    if isinstance(value, int) and _hint(key) in (float, typing.Optional[float]):
        value = math.inf
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_lib.from_dict({**_demo().to_dict(), section: {**_demo().to_dict()[section], name: value}})


def test_yaml_is_read_strictly(tmp_path):
    """1e-4 is a number; a repeated key, at any depth, and an alias are refused."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: demo\ntrain:\n  weight_decay: 1e-4\n  base_learning_rate: 2E-1\n")
    config = _demo(path=str(recipe))
    assert config.train.weight_decay == 1e-4 and config.train.base_learning_rate == 0.2
    for text, named in [("train:\n  epochs: 2\n  epochs: 3\n", "'epochs' is given twice"),
                        ("train:\n  epochs: 2\ntrain:\n  seed: 1\n", "'train' is given twice"),
                        ("train:\n  epochs: &e 2\n  validation_freq: *e\n", "aliases are not supported"),
                        ("train: [unclosed\n", "not valid YAML")]:
        recipe.write_text(text)
        with pytest.raises(ConfigError, match=named):
            _demo(path=str(recipe))
    recipe.write_bytes(b"train:\n  epochs: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        _demo(path=str(recipe))
    with pytest.raises(ConfigError, match="given twice"):
        _demo("model.lambda_layer={key_dim: 8, key_dim: 16}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# input.data_dir is the command line's --data_dir, which overrides --set.
@given(key=st.sampled_from([key for key in KEYS if key != "input.data_dir"]),
       text=st.sampled_from([".nan", ".inf", "-1e400", "[]", "{}"]))
def test_cli_refuses_in_one_line_before_creating_anything(tmp_path_factory, capsys, key, text):
    capsys.readouterr()  # The fixture lives across examples: start from an empty capture.
    folder = tmp_path_factory.mktemp("run")
    model_dir = folder / "model"
    status = train.main(["--config", "demo", "--data_dir", str(folder / "data"), "--model_dir", str(model_dir),
                         "--set", f"{key}={text}"])
    error = capsys.readouterr().err.strip().splitlines()
    if status == 0:  # Never: each drawn value is out of every key's range.
        pytest.fail(f"{key}={text} was accepted")
    assert status == 2 and len(error) == 1 and error[0].startswith("python -m training.train: error: "), error
    assert not model_dir.exists() and not (folder / "data").exists()
