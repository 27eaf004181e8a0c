"""Experiment configuration as data: YAML files -> validated, frozen dataclasses.

Modelled on tensorflow/models official/vision: a recipe is a YAML file under
`training/configs/` with four sections, each mapped onto a dataclass,

    model:    `lambda_keras.models.build_model`'s model config              (ModelConfig)
    input:    the tf.data pipeline, `training.input_config.InputConfig`   (InputConfig)
    train:    schedule, optimizer and regularization                      (TrainConfig)
    runtime:  strategy, precision, XLA                                    (RuntimeConfig)

plus the top-level keys `model_dir` and `demo_data`. A recipe may start with
`base: OTHER_NAME` to inherit another recipe and override only some keys (merged key by
key, recursively). `--set section.key=value` overrides are applied to the merged
mapping before validation; values are parsed as YAML (`0.1`, `true`, `null`, `[1, 2]`).

Validation happens on load, in each section's constructor: an unknown key, a value of
the wrong type or out of range raises `ConfigError` naming the dotted key
(`train.warmup_epochs`). Reading is strict where YAML is lax: a key given twice in one
mapping is refused (PyYAML keeps the last silently), `1e-4` is a number as in YAML 1.2
(PyYAML's YAML 1.1 reads it as a string), anchors and aliases are refused (`base:` shares
settings), every number must be finite and every integer fit in 64 bits. Errors are
`lambda_keras.cli.UserError`s, so importing this module imports the library, and with
it Keras: `python -m training.train` applies --backend before its imports.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from lambda_keras.models.model_config import ModelConfig, ModelConfigError, plain_data
from training.errors import ConfigError
from training.errors import check_finite_numbers
from training.errors import fail as _fail
from training.input_config import MAX_SEED, InputConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

STRATEGIES = ("auto", "tpu", "gpu", "multiworker", "cpu")
_INT64_LIMIT = 2**63
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Schedule, optimizer and regularization (the recipes in docs/design.md, "Training recipes").

    epochs: training epochs (90 in section 4.1, 350 in section 4.2).
    train_examples: examples in the training split; with the global batch it fixes the
      steps per epoch (ImageNet: 1,281,167).
    steps_per_epoch: override of train_examples // global_batch_size (smoke runs).
    validation_freq: evaluate every N epochs (the last epoch is always evaluated at
      the end of the run).
    base_learning_rate / learning_rate_base_batch: the peak learning rate is
      base_learning_rate * global_batch_size / learning_rate_base_batch (0.1 x B/256).
    warmup_epochs: linear warm-up from 0 to the peak, then cosine decay to 0.
    momentum / nesterov: SGD momentum.
    weight_decay: coupled L2 (gradient weight_decay * w) on every trainable weight with
      two or more dimensions (conv, dense and lambda kernels, position embeddings); not
      on batch-norm scales and offsets or biases. 1e-4 (4.1) or 4e-5 (4.2).
    label_smoothing: on hard labels (Mixup/CutMix labels bring their own smoothing).
    ema_decay: exponential moving average of the trainable weights, used for every
      evaluation and checkpoint; null or 0 disables it.
    steps_per_execution: training steps per tf.function call; null: 1, or up to 100
      under TPUStrategy. Values above 1 fail under MirroredStrategy and
      MultiWorkerMirroredStrategy (keras-team/keras#19246) and are rejected there.
    backup_every_steps: BackupAndRestore period in steps; null: at every epoch end.
    keep_backup: keep the backup after training, so rerunning a finished job only
      evaluates (instead of training from scratch).
    tensorboard_update_freq: "epoch" or a number of steps between TensorBoard writes.
    seed: seed of Keras' initializers and random layers, in [0, 2**32 - 1]; null for a
      random one.
    """

    epochs: int = 90
    train_examples: int = 1_281_167
    steps_per_epoch: int | None = None
    validation_freq: int = 1
    base_learning_rate: float = 0.1
    learning_rate_base_batch: int = 256
    warmup_epochs: float = 5.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.9999
    steps_per_execution: int | None = None
    backup_every_steps: int | None = None
    keep_backup: bool = True
    tensorboard_update_freq: Union[Literal["epoch"], int] = "epoch"
    seed: int | None = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_finite_numbers("train", self)
        for name in ("epochs", "train_examples", "validation_freq",
                     "learning_rate_base_batch"):
            if getattr(self, name) < 1:
                _fail(f"train.{name}", getattr(self, name), "must be a positive integer")
        for name in ("steps_per_epoch", "steps_per_execution", "backup_every_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                _fail(f"train.{name}", value, "must be a positive integer or null")
        if not (self.base_learning_rate > 0 and math.isfinite(self.base_learning_rate)):
            _fail("train.base_learning_rate", self.base_learning_rate, "must be > 0")
        if not 0 <= self.warmup_epochs < self.epochs:
            _fail("train.warmup_epochs", self.warmup_epochs,
                  f"must be in [0, train.epochs={self.epochs})")
        if not 0 <= self.momentum < 1:
            _fail("train.momentum", self.momentum, "must be in [0, 1)")
        if self.weight_decay < 0:
            _fail("train.weight_decay", self.weight_decay, "must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            _fail("train.label_smoothing", self.label_smoothing, "must be in [0, 1)")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            _fail("train.ema_decay", self.ema_decay, "must be in [0, 1) or null")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            _fail("train.seed", self.seed, f"must be in [0, {MAX_SEED}] or null")
        if isinstance(self.tensorboard_update_freq, int) and self.tensorboard_update_freq < 1:
            _fail("train.tensorboard_update_freq", self.tensorboard_update_freq,
                  'must be "epoch" or a positive number of steps')

    @property
    def use_ema(self) -> bool:
        return bool(self.ema_decay)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the computation runs.

    strategy: "auto" (multiworker when TF_CONFIG names several tasks, else a TPU when
      one is named or attached, else all local GPUs, else the CPU), "tpu", "gpu",
      "multiworker" or "cpu". The CLI's --strategy overrides it.
    tpu: TPU name for TPUClusterResolver, or "local" on a TPU VM; null: $TPU_NAME,
      else "local". The CLI's --tpu overrides it.
    mixed_precision: "auto" (mixed_bfloat16 on TPU, mixed_float16 with loss scaling
      on GPUs, float32 on CPU) or a Keras dtype policy name.
    jit_compile: "auto" (Keras' choice: XLA on a single GPU, off on CPU and under
      MirroredStrategy, where forcing it fails), true or false.
    worker_start_timeout_seconds: how long a multi-worker (or multi-host JAX) run waits
      for all its workers to join before it exits with an error naming the wait.
    """

    strategy: str = "auto"
    tpu: str | None = None
    mixed_precision: str = "auto"
    jit_compile: Union[Literal["auto"], bool] = "auto"
    worker_start_timeout_seconds: int = 300

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            _fail("runtime.strategy", self.strategy, f"must be one of {STRATEGIES}")
        if self.worker_start_timeout_seconds < 1:
            _fail("runtime.worker_start_timeout_seconds", self.worker_start_timeout_seconds,
                  "must be a positive integer")
        if self.mixed_precision not in PRECISIONS:
            _fail("runtime.mixed_precision", self.mixed_precision,
                  f"must be one of {PRECISIONS}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole training run.

    model_dir: where checkpoints, logs, the backup and the config copy go (local or
      gs://); the CLI's --model_dir overrides it.
    demo_data: write the scikit-learn digits (training.demo_data) into input.data_dir
      first when it holds no finished demo data (`python -m training.train` does, before
      the run starts).
    """

    model: ModelConfig
    input: InputConfig
    train: TrainConfig
    runtime: RuntimeConfig
    model_dir: str = ""
    demo_data: bool = False

    @property
    def steps_per_epoch(self) -> int:
        """train.steps_per_epoch, or the training examples over the global batch."""
        if self.train.steps_per_epoch is not None:
            return self.train.steps_per_epoch
        return max(1, self.train.train_examples // self.input.global_batch_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (YAML-ready), every key included."""
        return plain_data(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


_SECTIONS = {"model": ModelConfig, "input": InputConfig, "train": TrainConfig,
             "runtime": RuntimeConfig}
_TOP_LEVEL = {"model_dir": str, "demo_data": bool}


def available_configs() -> list[str]:
    """Names of the recipes shipped under training/configs/."""
    return sorted(name[:-5] for name in os.listdir(CONFIG_DIR) if name.endswith(".yaml"))


def load_config(
    name_or_path: str, overrides: Sequence[str] = (), **flag_overrides: Any
) -> ExperimentConfig:
    """Reads, merges, overrides and validates an experiment config.

    Args:
      name_or_path: a recipe name under training/configs/ (e.g. "demo") or a YAML path.
      overrides: "section.key=value" strings (the CLI's --set), applied in order.
      **flag_overrides: dotted key -> value, applied last, skipped when the value is
        None (the CLI's --data_dir, --model_dir, --strategy, --tpu), e.g.
        `**{"input.data_dir": "/data"}`.

    Raises:
      ConfigError: naming the file, the key or the value at fault.
    """
    values = _read_with_bases(name_or_path, seen=())
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set {override!r}: expected key=value, e.g. train.epochs=10")
        try:
            value = load_yaml(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {override!r}: the value is not valid YAML: {error}") from None
        _set_dotted(values, key.strip(), value)
    for key, value in flag_overrides.items():
        if value is not None:
            _set_dotted(values, key, value)
    return from_dict(values)


def from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Builds and validates an ExperimentConfig from nested mappings."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"Invalid config: its top level is a {type(values).__name__}, not a mapping of sections "
                          "(model, input, train, ...).")
    values = dict(values)
    _check_keys("", values, set(_SECTIONS) | set(_TOP_LEVEL))
    kwargs: dict[str, Any] = {}
    for key, kind in _TOP_LEVEL.items():
        if key in values:
            kwargs[key] = _convert(key, values[key], kind)
    for section, cls in _SECTIONS.items():
        section_values = values.get(section) or {}
        if not isinstance(section_values, Mapping):
            _fail(section, section_values, "must be a mapping of keys to values")
        kwargs[section] = _build_section(section, cls, section_values)
    return ExperimentConfig(**kwargs)


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    if cls is ModelConfig:
        return _build_model_section(section, values)
    hints = typing.get_type_hints(cls)
    _check_keys(section, values, set(hints))
    converted = {
        key: _convert(f"{section}.{key}", value, hints[key]) for key, value in values.items()
    }
    return cls(**converted)  # Every section validates itself on construction.


def _build_model_section(section: str, values: Mapping[str, Any]) -> ModelConfig:
    """The library's ModelConfig: its own conversion (YAML lists to tuples) and rules."""
    _check_keys(section, values, {field.name for field in dataclasses.fields(ModelConfig)})
    try:
        return ModelConfig.from_dict(values)
    except ModelConfigError as error:
        # "model.lambda_layer: `scope_size` must be odd ...": the section, then the message
        # that names the field and its value.
        where = ".".join([section, *(error.key or "").split(".")[:-1]])
        raise ConfigError(f"Invalid config {where}: {error}") from None


def _check_keys(section: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"section {section!r}" if section else "the top level"
        dotted = [f"{section}.{key}" if section else key for key in unknown]
        raise ConfigError(
            f"Unknown config key(s) {dotted} in {where}; valid keys: {sorted(known)}."
        )


def _convert(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the type hint; YAML lists become tuples, ints floats."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _convert(key, value, option)
            except ConfigError:
                continue
        _fail(key, value, f"must be {_describe(hint)}")
    if hint is type(None):
        if value is None:
            return None
        _fail(key, value, "must be null")
    if origin is Literal:
        if value in typing.get_args(hint) and type(value) is type(typing.get_args(hint)[0]):
            return value
        _fail(key, value, f"must be one of {typing.get_args(hint)}")
    if origin is dict:
        if not isinstance(value, Mapping):
            _fail(key, value, "must be a mapping")
        return {str(name): item for name, item in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(key, value, f"must be a list ({_describe(hint)})")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(key, item, args[0]) for item in value)
        if len(value) != len(args):
            _fail(key, value, f"must have {len(args)} items")
        return tuple(_convert(key, item, arg) for item, arg in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        _fail(key, value, "must be true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if -_INT64_LIMIT <= value < _INT64_LIMIT:
                return value
            _fail(key, value, "must fit in 64 bits")
        _fail(key, value, "must be an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            _fail(key, value, "must be a finite number")
        _fail(key, value, "must be a number")
    if hint is str:
        if isinstance(value, str):
            return value
        _fail(key, value, "must be a string")
    raise TypeError(f"Unsupported config type {hint!r} for {key}")  # A bug in this module.


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(repr(value) for value in typing.get_args(hint))
    if origin is tuple:
        return "a list"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))


def _read_with_bases(name_or_path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    """The YAML mapping of a recipe with its `base:` chain merged in (base first)."""
    path = _resolve_path(name_or_path)
    if path in seen:
        raise ConfigError(f"Config {path} inherits from itself through `base:` ({seen}).")
    try:
        with open(path, encoding="utf-8") as file:
            values = load_yaml(file.read()) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"Config {path} is not UTF-8 text (byte {error.start}).") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Config {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"Config {path} must be a YAML mapping, not {type(values).__name__}.")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        _fail("base", base, "must be a recipe name or a YAML path")
    if not os.path.isabs(base) and not base.endswith((".yaml", ".yml")):
        parent = base
    else:
        parent = os.path.join(os.path.dirname(path), base)
    return _merge(_read_with_bases(parent, seen + (path,)), values)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's surprises (see the module doc)."""

    def compose_node(self, parent, index):  # noqa: D102 (PyYAML's hook)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"alias *{event.anchor} {event.start_mark}: anchors and aliases are not "
                                 "supported in configs; use `base:` to share settings")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: D102 (PyYAML's hook)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.YAMLError(f"key {key!r} is given twice in one mapping {key_node.start_mark}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's floats: `1e-4` and `1E+3` as well as `1.0e-4`.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parses config YAML strictly (see the module doc).

    Raises:
      yaml.YAMLError: invalid YAML, a duplicate key, or an alias.
    """
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def _resolve_path(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    path = os.path.join(CONFIG_DIR, f"{name_or_path}.yaml")
    if os.path.isfile(path):
        return path
    raise ConfigError(
        f"Config {name_or_path!r} is neither a YAML file nor a recipe name; recipes: "
        f"{available_configs()}."
    )


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key}: a dotted key needs a name between every two dots, e.g. train.epochs.")
    node = values
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section.")
        node = child
    node[parts[-1]] = value
