"""Image preprocessing for ImageNet-style classification: decode, crop, resize, normalise.

Plain TensorFlow ops only (no tf-models-official, no Keras): the training input pipeline
(`training.input_pipeline`) and the serving export (`export.saved_model`) both import it,
so serving applies exactly the evaluation transform that the model was validated with.
Augmentations that need tf-models-official are passed in as a callable (see
`training.augmentation`).

Every function works on one example; `tf.data` maps them over the records.
Pixel values are RGB in [0, 255] until `normalize_image`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

# ImageNet channel statistics on the [0, 255] scale (RGB order).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# JPEG inverse DCTs. Evaluation (and serving) uses the accurate integer IDCT, which
# decodes bit-identically to PIL / libjpeg defaults, so reported accuracy and a client
# decoding with PIL see exactly the pixels the model is evaluated on. Training uses
# TensorFlow's default fast IDCT (as the TPU reference does): it differs by a few
# levels per pixel, far below the augmentation noise, and decodes faster
# (docs/design.md, "Measured choices in the input pipeline").
EVAL_DCT_METHOD = "INTEGER_ACCURATE"
TRAIN_DCT_METHOD = ""

# A complete JPEG has the EOI marker FF D9 after its first scan; whatever follows EOI
# (a phone's trailer, a motion photo's video) the decoders ignore. Most files end with
# EOI, give or take a few padding bytes: finding it in this many last bytes settles
# them without walking the markers (`is_complete_jpeg`).
_EOI_SEARCH_BYTES = 64
# Markers without a length field (TEM, RST0-7), as in `image_files.jpeg_end`.
_STANDALONE_MARKERS = (0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Every PNG has the IEND chunk: length 0, type "IEND", its fixed CRC.
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"

ImageFn = Callable[[tf.Tensor], tf.Tensor]

# The largest model input side training and serving accept: 16x the paper's largest
# input; a larger one is a typo that would only fail once memory runs out.
MAX_IMAGE_SIZE = 4096
# Evaluation resizes: bilinear (the TPU ResNet recipe's) or bicubic (timm's).
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """How evaluation images are made from RGB images of any size, before the
    ImageNet mean/std normalisation that every model shares: what training validates
    with (`training.input_config.InputConfig.eval_transform`), what the serving export
    applies, and what published weights were measured with.

    image_size: the model's input height and width, in [1, MAX_IMAGE_SIZE].
    crop_padding: the centre crop keeps ``image_size / (image_size + crop_padding)``
      of the shorter side; in [0, image_size], so at least half of it.
    interpolation: "bilinear" (the paper's recipe) or "bicubic" (timm's).
    resize_first: False: crop, then resize the crop to ``image_size`` (the TPU ResNet
      recipe); True: resize the shorter side to ``image_size + crop_padding``
      (antialiased), then crop ``image_size`` from the centre (timm's, torchvision's
      ``Resize`` then ``CenterCrop``).

    Raises:
      ValueError: naming the first field out of range.
    """

    image_size: int
    crop_padding: int
    interpolation: str = "bilinear"
    resize_first: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or not (
                1 <= self.image_size <= MAX_IMAGE_SIZE):
            raise ValueError(f"image_size must be an integer in [1, {MAX_IMAGE_SIZE}], not {self.image_size!r}.")
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or not (
                0 <= self.crop_padding <= self.image_size):
            raise ValueError(f"crop_padding must be an integer in [0, image_size={self.image_size}], "
                             f"not {self.crop_padding!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}.")
        if not isinstance(self.resize_first, bool):
            raise ValueError(f"resize_first must be true or false, not {self.resize_first!r}.")

    @classmethod
    def from_input_config(cls, input_section: Mapping[str, Any]) -> "EvalTransform":
        """The transform of a training run, from its config.yaml ``input`` section."""
        return cls(input_section["image_size"], input_section["eval_crop_padding"],
                   input_section.get("eval_interpolation", "bilinear"), input_section.get("eval_resize_first", False))

    def replace(self, **changes: Any) -> "EvalTransform":
        """A copy with ``changes`` (checked like a new transform)."""
        return dataclasses.replace(self, **changes)


def timm_eval_transform(image_size: int, crop_pct: float) -> EvalTransform:
    """timm's evaluation transform: shorter side to ``floor(image_size / crop_pct)``,
    bicubic, then the centre ``image_size`` square."""
    return EvalTransform(image_size, math.floor(image_size / crop_pct) - image_size, "bicubic", resize_first=True)


def is_complete_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    """Cheap structural check of an encoded image, without decoding it.

    Args:
      image_bytes: scalar tf.string.

    Returns:
      Scalar tf.bool: True when the bytes start with the JPEG SOI marker (FF D8 FF) and
      hold the EOI marker (FF D9) after the first scan of the image, the rule of
      `lambda_keras.data.image_files.jpeg_end`: found in the last bytes, or else by
      walking the marker segments to the first scan (so an EXIF thumbnail's EOI does
      not count) and searching from there. Bytes after EOI are accepted, as the decoders
      accept them. False for an empty string (a record without the image key), PNG or
      other non-JPEG data, and truncated JPEGs; these would make `decode_and_crop_jpeg`
      fail. A JPEG damaged in the middle passes: libjpeg decodes it with the damage
      concealed, without an error.
    """
    length = tf.strings.length(image_bytes)
    starts_with_soi = tf.equal(tf.strings.substr(image_bytes, 0, 3), b"\xff\xd8\xff")
    tail_length = tf.minimum(length, _EOI_SEARCH_BYTES)
    tail = tf.io.decode_raw(
        tf.strings.substr(image_bytes, length - tail_length, tail_length), tf.uint8
    )
    eoi_at_end = tf.reduce_any(
        tf.logical_and(tf.equal(tail[:-1], 0xFF), tf.equal(tail[1:], 0xD9))
    )
    return tf.logical_and(
        starts_with_soi,
        tf.cond(eoi_at_end, lambda: tf.constant(True), lambda: _has_eoi_after_first_scan(image_bytes)),
    )


def _has_eoi_after_first_scan(image_bytes: tf.Tensor) -> tf.Tensor:
    """Scalar tf.bool: FF D9 follows the first SOS marker, found by walking the marker
    segments from offset 2 by their length fields (`image_files.jpeg_end` in graph ops).
    Only the few header bytes of each segment are read; the search after the scan is a
    string split, which is fast on a trailer of megabytes."""
    size = tf.strings.length(image_bytes)

    def walking(position, scan_start):
        return tf.logical_and(scan_start < 0, position + 4 <= size)

    def step(position, scan_start):
        fields = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, position, 4), tf.uint8), tf.int32)
        is_marker, marker = tf.equal(fields[0], 0xFF), fields[1]
        standalone = tf.reduce_any(tf.equal(marker, _STANDALONE_MARKERS))
        advance = tf.where(tf.equal(marker, 0xFF), 1, tf.where(standalone, 2, 2 + fields[2] * 256 + fields[3]))
        # Not a marker where one must be: stop, at the end, without a scan.
        next_position = tf.where(is_marker, position + advance, size)
        found = tf.logical_and(is_marker, tf.equal(marker, 0xDA))
        return tf.where(found, position, next_position), tf.where(found, position, scan_start)

    _, scan_start = tf.while_loop(walking, step, (tf.constant(2), tf.constant(-1)))
    after_scan = tf.strings.substr(image_bytes, tf.minimum(tf.maximum(scan_start, 0) + 2, size), size)
    parts = tf.strings.split(tf.reshape(after_scan, [1]), sep=b"\xff\xd9", maxsplit=1)
    return tf.logical_and(scan_start >= 0, tf.size(parts.flat_values) > 1)


def is_complete_png(image_bytes: tf.Tensor) -> tf.Tensor:
    """Scalar tf.bool: the bytes start with the PNG signature and hold the IEND chunk
    (anywhere: bytes after it are ignored by the decoder, as after a JPEG's EOI)."""
    starts_with_signature = tf.equal(tf.strings.substr(image_bytes, 0, 8), _PNG_SIGNATURE)
    parts = tf.strings.split(tf.reshape(image_bytes, [1]), sep=_PNG_IEND, maxsplit=1)
    return tf.logical_and(starts_with_signature, tf.size(parts.flat_values) > 1)


def is_servable_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Scalar tf.bool: a complete JPEG (`is_complete_jpeg`) or PNG (`is_complete_png`),
    what serving decodes; anything else is refused before decoding."""
    return tf.logical_or(is_complete_jpeg(image_bytes), is_complete_png(image_bytes))


def is_decodable_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    """`is_complete_jpeg`, and a JPEG header that reads: scalar tf.bool.

    For bytes that pass `is_complete_jpeg`, reads the header as `decode_and_crop_jpeg`
    does before decoding (the markers up to the first scan, with the frame and the
    quantisation and Huffman tables) and checks that it gives a positive size. A
    damaged header behind intact SOI and EOI markers (a zero height, a corrupt table)
    raises InvalidArgumentError here, at the cost of parsing the header, rather than in
    the decode of a whole batch: run this under `tf.data.Dataset.ignore_errors` to drop
    such records. False, without reading, for what `is_complete_jpeg` rejects.
    """

    def header_has_pixels() -> tf.Tensor:
        return tf.reduce_all(tf.image.extract_jpeg_shape(image_bytes) > 0)

    return tf.cond(is_complete_jpeg(image_bytes), header_has_pixels, lambda: tf.constant(False))


def center_crop_window(
    image_shape: tf.Tensor, image_size: int, crop_padding: int
) -> tf.Tensor:
    """The evaluation crop: a centred square of side image_size/(image_size+pad)*min(h, w).

    Args:
      image_shape: int32 [3] tensor, (height, width, channels) of the image.
      image_size: output side in pixels.
      crop_padding: 32 in the ResNet / LambdaNetworks recipe (crop ratio 0.875 at 224).

    Returns:
      int32 [4] crop window (offset_y, offset_x, crop_height, crop_width).
    """
    height, width = image_shape[0], image_shape[1]
    crop_fraction = image_size / (image_size + crop_padding)
    # Truncation (not rounding) as in the TPU ResNet reference preprocessing.
    crop_size = tf.cast(
        crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32
    )
    crop_size = tf.maximum(crop_size, 1)
    offset_y = (height - crop_size + 1) // 2
    offset_x = (width - crop_size + 1) // 2
    return tf.stack([offset_y, offset_x, crop_size, crop_size])


def inception_crop_window(
    image_shape: tf.Tensor,
    area_range: Sequence[float],
    aspect_ratio_range: Sequence[float],
    max_attempts: int,
    image_size: int,
    crop_padding: int,
) -> tf.Tensor:
    """Samples the Inception ("random resized") training crop.

    A window covering `area_range` of the image area with width/height in
    `aspect_ratio_range`, drawn by `tf.image.sample_distorted_bounding_box`. When no
    window fits in `max_attempts` tries, the sampler returns the whole image, and the
    evaluation centre crop is used instead; as in the TPU ResNet reference, a sampled
    window that happens to be the whole image is treated the same way.

    Args:
      image_shape: int32 [3] tensor, (height, width, channels).
      area_range: (low, high) fraction of the image area.
      aspect_ratio_range: (low, high) of crop width / crop height.
      max_attempts: sampling attempts before the fallback.
      image_size, crop_padding: define the fallback centre crop.

    Returns:
      int32 [4] crop window (offset_y, offset_x, crop_height, crop_width).
    """
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=whole_image,
        # With the whole image as the box, the covered fraction is the crop's area
        # fraction, so this makes the lower area bound exact.
        min_object_covered=area_range[0],
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    sampled = tf.stack([begin[0], begin[1], size[0], size[1]])
    sampling_failed = tf.reduce_all(tf.equal(size[:2], image_shape[:2]))
    return tf.cond(
        sampling_failed,
        lambda: center_crop_window(image_shape, image_size, crop_padding),
        lambda: sampled,
    )


def decode_and_crop(
    image_bytes: tf.Tensor, crop_window: tf.Tensor, dct_method: str = EVAL_DCT_METHOD
) -> tf.Tensor:
    """Decodes only `crop_window` of a JPEG: uint8 [crop_height, crop_width, 3]."""
    return tf.image.decode_and_crop_jpeg(
        image_bytes, crop_window, channels=3, dct_method=dct_method
    )


def resize(image: tf.Tensor, image_size: int, interpolation: str = "bilinear") -> tf.Tensor:
    """Resize (half-pixel centres, no antialiasing) to float32 [size, size, 3];
    ``interpolation`` is one of INTERPOLATIONS."""
    resized = tf.image.resize(image, [image_size, image_size], method=interpolation)
    return tf.ensure_shape(resized, [image_size, image_size, 3])


def resize_then_center_crop(
    image: tf.Tensor, image_size: int, crop_padding: int, interpolation: str = "bicubic"
) -> tf.Tensor:
    """timm's evaluation transform: torchvision ``Resize(image_size + crop_padding)``
    then ``CenterCrop(image_size)`` on a PIL image.

    The shorter side is resized to ``image_size + crop_padding`` and the longer one to
    ``int(that * longer / shorter)``, antialiased when shrinking and rounded to whole
    levels in [0, 255] as PIL's 8-bit images are; the crop's offsets round half to even,
    like Python's ``round`` in torchvision. TensorFlow's antialiased bicubic kernel is
    PIL's (Keys, a = -0.5); what differs is measured in docs/design.md.

    Args:
      image: uint8 or float [height, width, 3] RGB image in [0, 255].
      image_size: output side.
      crop_padding: timm's ``floor(image_size / crop_pct) - image_size``.
      interpolation: one of INTERPOLATIONS.

    Returns:
      float32 [image_size, image_size, 3], whole levels in [0, 255].
    """
    scale_size = image_size + crop_padding
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    shorter, longer = tf.minimum(height, width), tf.maximum(height, width)
    new_longer = tf.cast(
        tf.math.floordiv(tf.cast(scale_size, tf.int64) * tf.cast(longer, tf.int64), tf.cast(shorter, tf.int64)),
        tf.int32,
    )
    new_height = tf.where(height <= width, scale_size, new_longer)
    new_width = tf.where(height <= width, new_longer, scale_size)
    resized = tf.image.resize(tf.cast(image, tf.float32), [new_height, new_width], method=interpolation,
                              antialias=True)
    resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    top = tf.cast(tf.round(tf.cast(new_height - image_size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_width - image_size, tf.float32) / 2.0), tf.int32)
    cropped = resized[top : top + image_size, left : left + image_size]
    return tf.ensure_shape(cropped, [image_size, image_size, 3])


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """(image - mean) / stddev per channel for images in [0, 255]: float32, same shape.

    Takes one image ``[height, width, 3]`` or a batch ``[batch, height, width, 3]``.
    Computed as image * (1 / stddev) - mean / stddev. For a static image shape the two
    constants are materialised at one image's shape: TensorFlow's CPU kernels are
    slower broadcasting a 3-vector over the pixels than combining two tensors of the
    same shape. Normalise each image in the input pipeline's map, while it is in
    cache: a whole batch normalised at once is memory-bound (docs/design.md,
    "Measured choices in the input pipeline").
    """
    image = tf.cast(image, tf.float32)
    scale = 1.0 / np.array(STDDEV_RGB, np.float32)
    offset = -np.array(MEAN_RGB, np.float32) * scale
    if image.shape[-3:].is_fully_defined():
        scale = np.broadcast_to(scale, image.shape[-3:])
        offset = np.broadcast_to(offset, image.shape[-3:])
    return image * scale + offset


def preprocess_for_eval(
    image_bytes: tf.Tensor,
    image_size: int,
    crop_padding: int = 32,
    dtype: tf.DType | str = tf.float32,
    interpolation: str = "bilinear",
    resize_first: bool = False,
) -> tf.Tensor:
    """Evaluation (and serving) preprocessing of one encoded JPEG.

    Centre crop (`center_crop_window`), decoded directly by `decode_and_crop_jpeg`
    with the accurate IDCT (pixels as PIL decodes them), bilinear resize to
    `image_size`, ImageNet normalisation, cast to `dtype`.

    Args:
      image_bytes: scalar tf.string, a JPEG.
      image_size: output height and width.
      crop_padding: see `center_crop_window`.
      dtype: output dtype (the Keras compute dtype, e.g. bfloat16 on TPU).
      interpolation: one of INTERPOLATIONS.
      resize_first: timm's order, `resize_then_center_crop` of the whole decoded
        image, rather than crop (decoding only the crop), then resize.

    Returns:
      [image_size, image_size, 3] tensor of `dtype`.
    """
    if resize_first:
        image = tf.io.decode_jpeg(image_bytes, channels=3, dct_method=EVAL_DCT_METHOD)
        image = resize_then_center_crop(image, image_size, crop_padding, interpolation)
        return tf.cast(normalize_image(image), dtype)
    crop_window = center_crop_window(
        tf.image.extract_jpeg_shape(image_bytes), image_size, crop_padding
    )
    image = resize(decode_and_crop(image_bytes, crop_window), image_size, interpolation)
    return tf.cast(normalize_image(image), dtype)


def preprocess_decoded_for_eval(
    image: tf.Tensor,
    image_size: int,
    crop_padding: int = 32,
    dtype: tf.DType | str = tf.float32,
    interpolation: str = "bilinear",
    resize_first: bool = False,
) -> tf.Tensor:
    """`preprocess_for_eval` for an already decoded image.

    Args:
      image: uint8 or float [height, width, 3] RGB image in [0, 255].
      image_size, crop_padding, dtype, interpolation, resize_first: see
        `preprocess_for_eval`.

    Returns:
      [image_size, image_size, 3] tensor of `dtype`; for the decoded pixels of a JPEG
      it equals `preprocess_for_eval` of the JPEG.
    """
    if resize_first:
        image = resize_then_center_crop(image, image_size, crop_padding, interpolation)
        return tf.cast(normalize_image(image), dtype)
    window = center_crop_window(tf.shape(image), image_size, crop_padding)
    cropped = image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]]
    return tf.cast(normalize_image(resize(cropped, image_size, interpolation)), dtype)


def preprocess_for_train(
    image_bytes: tf.Tensor,
    image_size: int,
    area_range: Sequence[float] = (0.08, 1.0),
    aspect_ratio_range: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    max_attempts: int = 10,
    crop_padding: int = 32,
    random_flip: bool = True,
    augment_fn: ImageFn | None = None,
    dtype: tf.DType | str = tf.float32,
) -> tf.Tensor:
    """Training preprocessing of one encoded JPEG.

    Inception crop decoded directly by `decode_and_crop_jpeg` (only the crop is
    decoded, with the fast IDCT), random left-right flip, bilinear resize,
    `augment_fn` (e.g. RandAugment, on float pixels in [0, 255]), ImageNet
    normalisation, cast to `dtype`.

    Args:
      image_bytes: scalar tf.string, a JPEG.
      image_size: output height and width.
      area_range, aspect_ratio_range, max_attempts, crop_padding: see
        `inception_crop_window`.
      random_flip: flip left-right with probability 1/2.
      augment_fn: maps a float32 [image_size, image_size, 3] image in [0, 255] to
        one of the same shape and range.
      dtype: output dtype.

    Returns:
      [image_size, image_size, 3] tensor of `dtype`.
    """
    crop_window = inception_crop_window(
        tf.image.extract_jpeg_shape(image_bytes),
        area_range,
        aspect_ratio_range,
        max_attempts,
        image_size,
        crop_padding,
    )
    image = decode_and_crop(image_bytes, crop_window, TRAIN_DCT_METHOD)
    if random_flip:
        # Flipping commutes with the (symmetric) bilinear resize and is cheaper on
        # the uint8 crop than on the float output.
        image = tf.image.random_flip_left_right(image)
    image = resize(image, image_size)
    if augment_fn is not None:
        image = augment_fn(image)
    return tf.cast(normalize_image(image), dtype)
