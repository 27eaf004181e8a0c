"""What a model is, as frozen, validated data: ``ModelConfig`` and its ``LambdaLayerConfig``.

Every rule a model config or a lambda layer's arguments must follow is written here once:
``LambdaLayer``'s constructor, the ``LambdaResNet`` factory, ``build_model``, the training
config's ``model`` section and the KerasHub backbone all check their arguments by building
these classes (or, for the layer's batch-norm arguments, by the same check functions). A
YAML ``model`` section or a backbone's saved config is a :meth:`ModelConfig.to_dict`::

    architecture: LambdaResNet              # a name in variants.ARCHITECTURES
    alpha: 0.5                              # LambdaMobileNetV2 only
    blocks_per_stage: [1, 1, 1, 1]          # the generic factory only
    lambda_blocks: [[], [], [1], [1]]       # the generic factory only (1-based)
    placement: LLLL                         # HybridResNet50 only
    dropout_rate: 0.2
    lambda_layer: {scope_size: 7}           # overrides of the architecture's lambda layers

A named architecture ("LambdaResNet50") stands for its complete generic config in
``variants.VARIANT_CONFIGS``; its options left at None are that config's.

Pure data: importing this module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from lambda_keras.cli import UserError

GENERIC = "LambdaResNet"
HYBRID = "HybridResNet50"
MOBILENET_V2 = "LambdaMobileNetV2"
# The constructors that are not rows of variants.VARIANTS: the generic factory, the
# Section 5.1 study and the MobileNet-v2 of Appendix D.3.2.
FACTORIES = (GENERIC, HYBRID, MOBILENET_V2)
# The ResNet options LambdaMobileNetV2 takes unset or 0 only (its blocks are
# keras.applications.MobileNetV2's: ReLU6, no SE, no stochastic depth).
RESNET_ONLY = ("activation", "se_ratio", "stochastic_depth_rate")
STAGE_NAMES = ("c2", "c3", "c4", "c5")
# Bottleneck widths of c2-c5; a stage outputs 4x its width.
STAGE_WIDTHS = (64, 128, 256, 512)
BASES = ("resnet_rs", "vanilla", "tiered")
ACTIVATIONS = ("relu", "silu")
HYBRID_DEFAULT_PLACEMENT = "LLLL"
IMPLEMENTATIONS = ("auto", "einsum", "conv", "banded")
KEY_NORMALIZATIONS = ("softmax", "l2", "none")
POOL_SIZES = (2, 3)


class ModelConfigError(UserError, ValueError):
    """An invalid model config or layer argument.

    ``key`` is the field at fault, dotted below the model config ("dropout_rate",
    "lambda_layer.scope_size"), or None when the config as a whole is (not a mapping).
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _fail(key: str, value: Any, requirement: str) -> NoReturn:
    raise ModelConfigError(f"`{key}` must be {requirement}. Received: {key}={value!r}", key)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float, not a bool (``inf > 0`` holds: a range check alone lets it pass)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def check_number(key: str, value: Any, is_valid: Callable[[float], bool], requirement: str) -> float:
    """``value`` as a float when it is a finite number (not a bool) with ``is_valid``."""
    if not (_is_number(value) and is_valid(value)):
        _fail(key, value, requirement)
    return float(value)


def check_positive_int(key: str, value: Any) -> int:
    """``value`` when it is an int >= 1 (not a bool)."""
    if not (_is_int(value) and value >= 1):
        _fail(key, value, "a positive integer")
    return value


def check_bool(key: str, value: Any) -> bool:
    """``value`` when it is a bool (1 and 0 are not)."""
    if not isinstance(value, bool):
        _fail(key, value, "True or False")
    return value


def check_choice(key: str, value: Any, choices: tuple) -> Any:
    # Equal is not enough: 2.0 == 2 and True == 1, so the type must match as well.
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        _fail(key, value, f"one of {choices}")
    return value


def check_norm_momentum(value: Any) -> float:
    """Batch-norm momentum: the weight of the old moving statistics, in [0, 1)."""
    return check_number("norm_momentum", value, lambda momentum: 0 <= momentum < 1, "a number in [0, 1)")


def check_norm_epsilon(value: Any) -> float:
    """Batch-norm epsilon, added to the variance: positive and finite."""
    return check_number("norm_epsilon", value, lambda epsilon: epsilon > 0, "a positive finite number")


def _tuple(key: str, value: Any, requirement: str) -> tuple:
    """A list, tuple or other iterable (YAML lists, ``range``) as a tuple; not a string."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        _fail(key, value, requirement)
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class LambdaLayerConfig:
    """The ``LambdaLayer`` arguments a model sets, the same for all its lambda layers.

    The names, defaults and meanings are ``LambdaLayer``'s (see its docstring); the
    others (``filters``, ``strides``, the batch-norm momentum and epsilon) follow from
    where the layer sits in the model.

    key_dim: query/key depth ``|k|`` (Section 3.2; the paper's 16).
    num_heads: queries ``|h|`` per lambda (Section 3.2; the paper's 4).
    intra_depth: intra-depth ``|u|`` (Appendix B.4; 1, Table 3 also 4).
    scope_size: odd side ``r`` of the local position scope (Section 3.4; the paper's
      23), or None for global relative position embeddings.
    use_content, use_position: compute the content / position lambdas (Table 10);
      at least one.
    key_normalization: "softmax" (the paper's), "l2" or "none" (Table 12).
    query_softmax: also softmax the queries over the key depth (Table 12).
    use_batch_norm: batch norm on queries and values (Table 12's last row: False).
    implementation: "auto", "einsum", "conv" or "banded": the same numbers, at
      different speeds.
    pool_size: the average pool after a strided lambda layer, 3 (Appendix E.1) or 2
      (timm's).
    use_position_bias: a bias on the position lambdas (timm's, for its weights).
    """

    key_dim: int = 16
    num_heads: int = 4
    intra_depth: int = 1
    scope_size: int | None = 23
    use_content: bool = True
    use_position: bool = True
    key_normalization: str = "softmax"
    query_softmax: bool = False
    use_batch_norm: bool = True
    implementation: str = "auto"
    pool_size: int = 3
    use_position_bias: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ``ModelConfigError`` naming the first invalid field and its value."""
        check_positive_int("key_dim", self.key_dim)
        check_positive_int("num_heads", self.num_heads)
        check_positive_int("intra_depth", self.intra_depth)
        scope_size = self.scope_size
        if scope_size is not None:
            if not (_is_int(scope_size) and scope_size >= 1):
                _fail("scope_size", scope_size, "a positive odd integer or None (global)")
            if scope_size % 2 == 0:
                _fail("scope_size", scope_size, "odd so that the scope is centred on the query")
        for key in ("use_content", "use_position", "query_softmax", "use_batch_norm", "use_position_bias"):
            check_bool(key, getattr(self, key))
        if not (self.use_content or self.use_position):
            raise ModelConfigError(
                "At least one of `use_content` and `use_position` must be True. Received: "
                f"use_content={self.use_content}, use_position={self.use_position}",
                "use_content",
            )
        check_choice("key_normalization", self.key_normalization, KEY_NORMALIZATIONS)
        check_choice("implementation", self.implementation, IMPLEMENTATIONS)
        check_choice("pool_size", self.pool_size, POOL_SIZES)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: LambdaLayerConfig | None = None) -> LambdaLayerConfig:
        """``base`` (default: the paper's layer) with the fields ``values`` names replaced."""
        if not isinstance(values, Mapping):
            raise ModelConfigError(
                f"`lambda_layer` must be a mapping of LambdaLayer arguments. Received: lambda_layer={values!r}"
            )
        fields = [field.name for field in dataclasses.fields(cls)]
        unknown = set(values) - set(fields)
        if unknown:
            unknown = sorted(map(str, unknown))
            raise ModelConfigError(
                f"Unknown lambda_layer argument(s) {unknown}; a model sets {sorted(fields)} "
                "(the others follow from the architecture).",
                unknown[0],
            )
        return dataclasses.replace(base or cls(), **values)

    def to_dict(self) -> dict[str, Any]:
        """The ``LambdaLayer`` keyword arguments, JSON- and YAML-ready."""
        return dataclasses.asdict(self)


def _variants():
    """The variants module. It builds its table of configs from this module's classes,
    so it is imported here, when a named architecture is first looked up, not at the top."""
    from lambda_keras.models import variants

    return variants


def _named_config(architecture: str, placement: str | None = None) -> ModelConfig:
    """The complete generic config a named architecture stands for (HybridResNet50's
    for ``placement``)."""
    if architecture == HYBRID:
        return _variants().hybrid_config(placement or HYBRID_DEFAULT_PLACEMENT)
    return _variants().VARIANT_CONFIGS[architecture]


# Appendix D.3.2: the lightweight lambda block's lambda convolution, a 5x5 scope with
# |k| = 32 and |h| = 4 (|u| = 1, the default).
MOBILENET_V2_LAMBDA_LAYER = LambdaLayerConfig(key_dim=32, num_heads=4, scope_size=5)


def architecture_lambda_layer(architecture: str) -> LambdaLayerConfig:
    """The lambda layers ``architecture`` builds unless told otherwise: its row's in
    ``variants.VARIANT_CONFIGS`` (the paper's, or timm's for timm's rows), Appendix
    D.3.2's for LambdaMobileNetV2, the paper's for the ResNet factories."""
    if architecture == MOBILENET_V2:
        return MOBILENET_V2_LAMBDA_LAYER
    if architecture in FACTORIES:
        return LambdaLayerConfig()
    return _named_config(architecture).lambda_layer


def check_placement(placement: Any) -> str:
    """HybridResNet50's four characters, 'C' (3x3 conv) or 'L' (lambda layer) per stage."""
    if not isinstance(placement, str) or len(placement) != 4 or set(placement) - {"C", "L"}:
        _fail("placement", placement,
              "four characters, 'C' (3x3 conv) or 'L' (lambda layer), for stages c2, c3, c4, c5, e.g. 'CCLL'")
    return placement


# A bound, so that building a layout (even with shapes only, to count its parameters
# before a run) ends in seconds.
MAX_BLOCKS_PER_STAGE = 256


def check_stages(blocks_per_stage: Any, lambda_blocks: Any) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The generic factory's block layout as tuples: four positive block counts, and per
    stage the sorted 1-based indices of its lambda blocks (Table 18 counts from 1)."""
    requirement = (f"four positive integers of at most {MAX_BLOCKS_PER_STAGE}, the blocks of stages c2, c3, c4, c5 "
                   "(ResNet-RS-420, the deepest of the paper, has 87 in c4)")
    blocks = _tuple("blocks_per_stage", blocks_per_stage, requirement)
    if len(blocks) != 4 or not all(_is_int(n) and 1 <= n <= MAX_BLOCKS_PER_STAGE for n in blocks):
        _fail("blocks_per_stage", blocks, requirement)
    requirement = "one collection of 1-based block indices per stage c2, c3, c4, c5"
    stages = _tuple("lambda_blocks", lambda_blocks, requirement)
    if len(stages) != 4:
        _fail("lambda_blocks", stages, requirement)
    layout = []
    for stage, num_blocks, indices in zip(STAGE_NAMES, blocks, stages):
        indices = _tuple("lambda_blocks", indices, requirement)
        if not all(_is_int(i) and 1 <= i <= num_blocks for i in indices):
            raise ModelConfigError(
                f"`lambda_blocks` for stage {stage} must be block indices in [1, {num_blocks}] (1-based). "
                f"Received: {sorted(indices, key=repr)!r}",
                "lambda_blocks",
            )
        layout.append(tuple(sorted(set(indices))))
    return blocks, tuple(layout)


def _se_ratio(value: Any) -> float | tuple[float, ...]:
    requirement = "a number in [0, 1] or four of them (one per stage)"
    if isinstance(value, (int, float)):
        return check_number("se_ratio", value, lambda ratio: 0 <= ratio <= 1, requirement)
    ratios = _tuple("se_ratio", value, requirement)
    if len(ratios) != 4 or not all(_is_number(ratio) and 0 <= ratio <= 1 for ratio in ratios):
        _fail("se_ratio", ratios, requirement)
    return tuple(float(ratio) for ratio in ratios)


def check_width_multiplier(value: Any) -> float:
    """A number in (0, 16] that makes every stage width a whole number, as a float."""
    requirement = f"a number in (0, 16] that makes each of the stage widths {list(STAGE_WIDTHS)} a whole number"
    multiplier = check_number("width_multiplier", value, lambda number: 0 < number <= 16, requirement)
    if not all(float(width * multiplier).is_integer() for width in STAGE_WIDTHS):
        _fail("width_multiplier", value, requirement)
    return multiplier


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A network of the family: which constructor, with which options.

    Classes, input size, dtypes and synchronized batch norm are not part of it: they
    differ between training and serving and are ``build_model``'s arguments. Options
    left at None take the constructor's default.

    architecture: a constructor of ``lambda_keras.models`` by name
      (``variants.ARCHITECTURES``). "LambdaResNet" is the generic factory and needs
      ``blocks_per_stage`` and ``lambda_blocks``; "HybridResNet50" takes ``placement``;
      the named ones take neither: each stands for its complete generic config in
      ``variants.VARIANT_CONFIGS``. "LambdaMobileNetV2" (Appendix D.3.2) takes
      ``alpha``, ``dropout_rate``, the batch-norm options and ``lambda_layer``.
    alpha: LambdaMobileNetV2's width multiplier, positive; None: 1.0.
    blocks_per_stage: bottlenecks in c2, c3, c4, c5 (generic factory only).
    lambda_blocks: per stage, the sorted 1-based indices of the blocks with a lambda
      layer (generic factory only; Table 18 reads 1-based, docs/design.md).
    placement: "C" or "L" per stage for HybridResNet50 (Section 5.1, Table 13);
      None: "LLLL".
    base: "resnet_rs", "vanilla" or "tiered" stem and shortcuts (generic factory
      only; None: "resnet_rs").
    width_multiplier: scales the stage widths (64, 128, 256, 512 in c2-c5; a stage
      outputs 4x its width), each to a whole number, in (0, 16] (generic factory
      only; None: 1). The stem keeps its widths.
    activation: "relu" or "silu", after every batch norm but a residual branch's
      last; None: the architecture's (SiLU for LambdaResNet50TS, ReLU otherwise).
    se_ratio: squeeze-and-excitation ratio of the conv blocks, one number or one per
      stage, in [0, 1]; None: the architecture's (0.25 in c2/c3 for the LambdaResNets,
      Appendix E.1; 0.25 for ResNet-RS; none otherwise).
    dropout_rate: dropout before the classifier, in [0, 1).
    stochastic_depth_rate: the rate of c5, in [0, 1); stage ``c<s>`` gets ``s / 5`` of it
      (ResNets only).
    norm_momentum: momentum of every batch norm, the lambda layers' included, in
      [0, 1); None: 0.9 (LambdaMobileNetV2: 0.999, keras.applications').
    norm_epsilon: epsilon of every batch norm, positive; None: 1e-5
      (LambdaMobileNetV2: 1e-3).
    lambda_layer: the lambda layers' arguments. Given as None (the architecture's,
      :func:`architecture_lambda_layer`) or as a mapping of some of them (overrides of
      those), it holds the resolved ``LambdaLayerConfig`` once constructed.

    Raises:
      ModelConfigError: on construction, naming the first invalid field (``.key``).
    """

    architecture: str = "LambdaResNet50"
    alpha: float | None = None
    blocks_per_stage: tuple[int, ...] | None = None
    lambda_blocks: tuple[tuple[int, ...], ...] | None = None
    placement: str | None = None
    base: str | None = None
    width_multiplier: float | None = None
    activation: str | None = None
    se_ratio: float | tuple[float, ...] | None = None
    dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0
    norm_momentum: float | None = None
    norm_epsilon: float | None = None
    lambda_layer: LambdaLayerConfig | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def _set(self, key: str, value: Any) -> None:
        """Stores a field's normalised value (tuples for lists, floats for ints)."""
        object.__setattr__(self, key, value)

    def validate(self) -> None:
        """Checks every field, normalises it in place and resolves ``lambda_layer``.

        Raises:
          ModelConfigError: naming the first invalid field and its value.
        """
        architecture = self.architecture
        # The factories are known without the table (whose rows are generic configs).
        if not (isinstance(architecture, str)
                and (architecture in FACTORIES or architecture in _variants().VARIANT_CONFIGS)):
            _fail("architecture", architecture, f"one of {_variants().ARCHITECTURES}")
        only_for = {"blocks_per_stage": GENERIC, "lambda_blocks": GENERIC, "base": GENERIC,
                    "width_multiplier": GENERIC, "placement": HYBRID, "alpha": MOBILENET_V2}
        for key, owner in only_for.items():
            if getattr(self, key) is not None and architecture != owner:
                raise ModelConfigError(
                    f"`{key}` applies only to {owner}, not {architecture}. Received: {key}={getattr(self, key)!r}", key
                )
        if architecture == MOBILENET_V2:
            for key in RESNET_ONLY:
                value = getattr(self, key)
                if value is not None and value != 0:
                    raise ModelConfigError(
                        f"`{key}` applies only to the ResNets, not {architecture}. Received: {key}={value!r}", key
                    )
        if self.alpha is not None:
            self._set("alpha", check_number("alpha", self.alpha, lambda alpha: alpha > 0, "a positive number"))
        if architecture == GENERIC:
            missing = [key for key in ("blocks_per_stage", "lambda_blocks") if getattr(self, key) is None]
            if missing:
                raise ModelConfigError(f"The generic LambdaResNet factory needs {' and '.join(missing)}.", missing[0])
            blocks, lambda_blocks = check_stages(self.blocks_per_stage, self.lambda_blocks)
            self._set("blocks_per_stage", blocks)
            self._set("lambda_blocks", lambda_blocks)
        if self.width_multiplier is not None:
            self._set("width_multiplier", check_width_multiplier(self.width_multiplier))
        if self.placement is not None:
            check_placement(self.placement)
        if self.base is not None:
            check_choice("base", self.base, BASES)
        if self.activation is not None:
            check_choice("activation", self.activation, ACTIVATIONS)
        if self.se_ratio is not None:
            self._set("se_ratio", _se_ratio(self.se_ratio))
        for key in ("dropout_rate", "stochastic_depth_rate"):
            self._set(key, check_number(key, getattr(self, key), lambda rate: 0 <= rate < 1, "in [0, 1)"))
        if self.norm_momentum is not None:
            self._set("norm_momentum", check_norm_momentum(self.norm_momentum))
        if self.norm_epsilon is not None:
            self._set("norm_epsilon", check_norm_epsilon(self.norm_epsilon))
        try:
            lambda_layer = self.lambda_layer
            if not isinstance(lambda_layer, LambdaLayerConfig):
                overrides = {} if lambda_layer is None else lambda_layer
                lambda_layer = LambdaLayerConfig.from_dict(overrides, architecture_lambda_layer(architecture))
        except ModelConfigError as error:
            key = "lambda_layer" if error.key is None else f"lambda_layer.{error.key}"
            raise ModelConfigError(str(error), key) from None
        self._set("lambda_layer", lambda_layer)
        self._check_heads_divide_widths()

    def _check_heads_divide_widths(self) -> None:
        # A lambda layer's |h| queries split its output channels, the stage width
        # (Section 3.2: |v| = d / |h|), in every stage that has lambda layers.
        if self.architecture == MOBILENET_V2:
            return  # its widths follow from alpha; its lambda layers check them when built
        widths = [width for width, indices in zip(self.stage_widths(), self.layout()[1]) if indices]
        num_heads = self.lambda_layer.num_heads
        if any(width % num_heads for width in widths):
            raise ModelConfigError(
                f"`num_heads` must divide the width of every stage with lambda layers, {widths}. "
                f"Received: num_heads={num_heads}",
                "lambda_layer.num_heads",
            )

    def stage_widths(self) -> tuple[int, ...]:
        """The bottleneck widths of c2-c5 of a ResNet: ``STAGE_WIDTHS`` times the
        ``width_multiplier`` (None: 1)."""
        multiplier = 1.0 if self.width_multiplier is None else self.width_multiplier
        return tuple(int(width * multiplier) for width in STAGE_WIDTHS)

    def layout(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """``(blocks_per_stage, lambda_blocks)`` of the network this config names, for a
        ResNet (lambda block indices 1-based): the generic factory's own fields, or those
        of the complete config a named architecture stands for.

        Raises:
          ValueError: for LambdaMobileNetV2, which has no ResNet stages.
        """
        if self.architecture == MOBILENET_V2:
            raise ValueError(f"{MOBILENET_V2} has no ResNet stages (its block table is variants.MOBILENET_V2_BLOCKS).")
        if self.architecture == GENERIC:
            return self.blocks_per_stage, self.lambda_blocks
        named = _named_config(self.architecture, self.placement)
        return named.blocks_per_stage, named.lambda_blocks

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """A config from plain data (YAML, JSON); keys left out or None take the defaults.

        Raises:
          ModelConfigError: an unknown key, or an invalid value, naming the key.
        """
        if not isinstance(values, Mapping):
            raise ModelConfigError(f"A model config must be a mapping of keys to values. Received: {values!r}")
        fields = [field.name for field in dataclasses.fields(cls)]
        unknown = set(values) - set(fields)
        if unknown:
            unknown = sorted(map(str, unknown))
            raise ModelConfigError(f"Unknown model config key(s) {unknown}; valid keys: {sorted(fields)}.", unknown[0])
        return cls(**{key: value for key, value in values.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain lists, dicts and scalars (YAML- and JSON-ready);
        ``from_dict`` of it gives an equal config."""
        return plain_data(dataclasses.asdict(self))


def plain_data(value: Any) -> Any:
    """``value`` with its tuples as lists, recursively: YAML and JSON write it as is."""
    if isinstance(value, dict):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    return value
