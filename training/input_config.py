"""The input-pipeline configuration: plain data with validation.

`InputConfig` holds everything `training.input_pipeline.build_dataset` needs. It is a
frozen dataclass so that a training config (YAML, later) maps onto it one key per field;
`InputConfig.from_dict` rejects unknown keys and `validate` (run on construction, as
in every config section) rejects bad values, each with a `ConfigError` that names the
key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lambda_keras.data.preprocessing import MAX_IMAGE_SIZE, EvalTransform
from training.errors import ConfigError, check_finite_numbers, fail

SOURCES = ("tfrecord", "tfds")
# Bounds that catch a typo before any work: 2**20 images is the largest batch in the
# large-batch literature; seeds reach NumPy's 32-bit legacy generator.
MAX_GLOBAL_BATCH_SIZE = 2**20
MAX_SEED = 2**32 - 1
SPLITS = ("train", "validation", "minival")

# The label offset each source needs to map its stored labels onto 0..num_classes-1:
# imagenet_to_gcs TFRecords store 1..1000, TFDS stores 0..999.
DEFAULT_LABEL_OFFSETS = {"tfrecord": -1, "tfds": 0}


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Where the images come from and how they are preprocessed.

    Sources:
      source: "tfrecord" (imagenet_to_gcs layout shards, local or gs://) or "tfds".
      data_dir: the folder holding the TFRecord shards (source "tfrecord").
      train_file_pattern / eval_file_pattern: globs inside `data_dir` for the
        training and validation shards; "minival" takes the last
        `minival_num_shards` training shards (sorted by name).
      image_key / label_key: tf.Example feature keys (source "tfrecord").
      tfds_name: a TFDS image-classification dataset with JPEG images and the
        features "image" and "label", e.g. "imagenet2012", "imagenette/320px-v2",
        "imagenet_v2" (which has only a "test" split: set tfds_eval_split="test").
      tfds_data_dir / tfds_manual_dir: TFDS `data_dir` and the folder with the
        manually downloaded archives (ImageNet's ILSVRC2012_img_*.tar).
      tfds_prepare: run `download_and_prepare` first (implied by tfds_manual_dir);
        for datasets other than imagenet2012 this downloads.
      tfds_train_split / tfds_eval_split / tfds_minival_split: TFDS split strings
        (slicing allowed, e.g. "train[:98%]" and "train[98%:]").
      label_offset: added to stored labels to get 0-based class ids; None means the
        source's convention (-1 for "tfrecord", 0 for "tfds").
      num_classes: model classes; every label (after the offset) must be in
        [0, num_classes).

    Batching and reading:
      global_batch_size: training batch over all replicas.
      eval_global_batch_size: evaluation batch over all replicas (None: the same).
      eval_drop_remainder: drop the last partial evaluation batch (static shapes
        for TPU, at the price of up to a batch of unseen validation images).
      minival_num_shards: training shards held out for tuning (the paper: 20 of 1024).
      shuffle_buffer_size: examples in the per-host shuffle buffer (training).
      interleave_cycle_length: files read in parallel.
      cache: cache the serialized records in memory after the first epoch.
      deterministic_train: keep the training element order reproducible (slower).
      seed: seed for file and example shuffling (None: nondeterministic).

    Preprocessing:
      image_size: output height and width in pixels.
      crop_area_range / crop_aspect_ratio_range / crop_max_attempts: the training
        Inception crop (fraction of the image area, width / height).
      eval_crop_padding: evaluation crops a centred square of side
        image_size / (image_size + eval_crop_padding) * min(height, width).
      eval_interpolation: the evaluation resize, "bilinear" or "bicubic".
      eval_resize_first: evaluation resizes the shorter side to image_size +
        eval_crop_padding, then crops the centre (timm's order); False: crop, then
        resize. timm's weights (LambdaResNet50TS etc.) evaluate with image_size 256,
        bicubic, resize first and padding 16 (crop_pct 0.94) or 13 (0.95).
      random_flip: random left-right flip in training.
      use_randaugment / randaugment_num_layers / randaugment_magnitude:
        tf-models-official RandAugment in training.
      mixup_alpha / cutmix_alpha: Beta parameters of Mixup / CutMix (0 disables
        each); when either is on, training labels become soft one-hot vectors.
      mixup_cutmix_prob / mixup_cutmix_switch_prob / mixup_label_smoothing:
        probability of mixing a batch, of CutMix instead of Mixup, and the label
        smoothing MixupAndCutmix applies to its soft labels.

    Bad data:
      skip_corrupt_records: skip (and count) records whose image is missing, not a
        JPEG or truncated; False raises on the first one.
    """

    source: str = "tfrecord"
    data_dir: str = ""
    train_file_pattern: str = "train-*"
    eval_file_pattern: str = "validation-*"
    # lambda_keras.data.records.IMAGE_KEY / LABEL_KEY, restated: importing it would load TensorFlow here.
    image_key: str = "image/encoded"
    label_key: str = "image/class/label"
    tfds_name: str = "imagenet2012"
    tfds_data_dir: str | None = None
    tfds_manual_dir: str | None = None
    tfds_prepare: bool = False
    tfds_train_split: str = "train"
    tfds_eval_split: str = "validation"
    tfds_minival_split: str | None = None
    label_offset: int | None = None
    num_classes: int = 1000

    global_batch_size: int = 1024
    eval_global_batch_size: int | None = None
    eval_drop_remainder: bool = False
    minival_num_shards: int = 0
    shuffle_buffer_size: int = 10_000
    interleave_cycle_length: int = 16
    cache: bool = False
    deterministic_train: bool = False
    seed: int | None = None

    image_size: int = 224
    crop_area_range: tuple[float, float] = (0.08, 1.0)
    crop_aspect_ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    crop_max_attempts: int = 10
    eval_crop_padding: int = 32
    eval_interpolation: str = "bilinear"
    eval_resize_first: bool = False
    random_flip: bool = True
    use_randaugment: bool = False
    randaugment_num_layers: int = 2
    randaugment_magnitude: float = 10.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_cutmix_prob: float = 1.0
    mixup_cutmix_switch_prob: float = 0.5
    mixup_label_smoothing: float = 0.0

    skip_corrupt_records: bool = True

    def __post_init__(self) -> None:
        # YAML gives lists; the ranges are compared and hashed as tuples.
        object.__setattr__(self, "crop_area_range", tuple(self.crop_area_range))
        object.__setattr__(
            self, "crop_aspect_ratio_range", tuple(self.crop_aspect_ratio_range)
        )
        self.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "InputConfig":
        """Builds a config from a mapping (e.g. a YAML section), rejecting unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown input config key(s) {unknown}; valid keys are {sorted(known)}."
            )
        return cls(**values)

    def replace(self, **changes: Any) -> "InputConfig":
        """Returns a copy with `changes` applied (validated like a new config)."""
        return self.from_dict({**dataclasses.asdict(self), **changes})

    @property
    def resolved_label_offset(self) -> int:
        """`label_offset`, or the source's convention when it is None."""
        if self.label_offset is None:
            return DEFAULT_LABEL_OFFSETS[self.source]
        return self.label_offset

    @property
    def eval_transform(self) -> EvalTransform:
        """The evaluation transform of this input (what the serving export applies too)."""
        return EvalTransform(self.image_size, self.eval_crop_padding, self.eval_interpolation, self.eval_resize_first)

    @property
    def mixup_or_cutmix(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid field (``input.<field>``) and its value."""

        def fail_field(name: str, requirement: str) -> None:
            fail(f"input.{name}", getattr(self, name), requirement)

        check_finite_numbers("input", self)

        if self.source not in SOURCES:
            fail_field("source", f"must be one of {SOURCES}")
        if self.source == "tfrecord" and not self.data_dir:
            fail_field("data_dir", 'must name the TFRecord folder when source="tfrecord"')
        if self.source == "tfds" and not self.tfds_name:
            fail_field("tfds_name", 'must name a TFDS dataset when source="tfds"')
        for name in ("num_classes", "global_batch_size", "image_size",
                     "crop_max_attempts", "interleave_cycle_length",
                     "shuffle_buffer_size", "randaugment_num_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail_field(name, "must be a positive integer")
        if self.eval_global_batch_size is not None and (
            not isinstance(self.eval_global_batch_size, int)
            or self.eval_global_batch_size < 1
        ):
            fail_field("eval_global_batch_size", "must be a positive integer or None")
        for name in ("minival_num_shards", "eval_crop_padding"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail_field(name, "must be a non-negative integer")
        if self.image_size > MAX_IMAGE_SIZE:
            fail_field("image_size", f"must be at most {MAX_IMAGE_SIZE} pixels")
        # The evaluation crop keeps image_size / (image_size + padding) of the shorter
        # side: at least half of it.
        if self.eval_crop_padding > self.image_size:
            fail_field("eval_crop_padding", f"must be at most input.image_size={self.image_size} (the centre "
                                            "crop keeps image_size / (image_size + padding) of the shorter side)")
        for name in ("global_batch_size", "eval_global_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) > MAX_GLOBAL_BATCH_SIZE:
                fail_field(name, f"must be at most {MAX_GLOBAL_BATCH_SIZE}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            fail_field("seed", f"must be in [0, {MAX_SEED}] or null")
        if self.eval_interpolation not in ("bilinear", "bicubic"):
            fail_field("eval_interpolation", 'must be "bilinear" or "bicubic"')
        if not isinstance(self.eval_resize_first, bool):
            fail_field("eval_resize_first", "must be true or false")
        if self.label_offset is not None and not isinstance(self.label_offset, int):
            fail_field("label_offset", "must be an integer or None")
        low, high = self._pair("crop_area_range")
        if not 0 < low <= high <= 1:
            fail_field("crop_area_range", "must be (low, high) with 0 < low <= high <= 1")
        low, high = self._pair("crop_aspect_ratio_range")
        if not 0 < low <= high:
            fail_field("crop_aspect_ratio_range", "must be (low, high) with 0 < low <= high")
        if not 0 <= self.randaugment_magnitude <= 30:
            fail_field("randaugment_magnitude", "must be in [0, 30] (10 is the paper's scale)")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                fail_field(name, "must be >= 0 (0 disables it)")
        for name in ("mixup_cutmix_prob", "mixup_cutmix_switch_prob",
                     "mixup_label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                fail_field(name, "must be in [0, 1]")

    def _pair(self, name: str) -> tuple[float, float]:
        value = getattr(self, name)
        if len(value) != 2:
            fail(f"input.{name}", value, "must have two numbers")
        return float(value[0]), float(value[1])
