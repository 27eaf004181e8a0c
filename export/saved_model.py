"""Export a trained model as a TF Serving SavedModel that takes encoded images.

Usage:
  python -m export.saved_model --model PATH --output BASE/NAME [--version N]
      [--image_size S] [--top_k K] [--class_names FILE] [--checkpoint last|best]

PATH is a `.keras` file or a training model_dir (`python -m training.train
--model_dir`), from which `checkpoints/<checkpoint>.keras` (the EMA weights when the
run used EMA) and, from `config.yaml`, the image size and evaluation crop padding are
read. The export is written to `BASE/NAME/<version>/`, the layout TF Serving watches:

  saved_model.pb, variables/        the graph and the (float32) weights
  assets.extra/tf_serving_warmup_requests
                                    PredictionLog records replayed at load time

Versions are never overwritten: without --version the next free number is used;
--version naming an existing one is an error. On a local filesystem the version is
written under a temporary name in BASE/NAME (TF Serving ignores names that are not
integers) and renamed into place only when complete, so a server never sees a
half-written model. BASE may also be an object store TensorFlow can write
(`gs://bucket/models`): these have no atomic rename, so the version is written
locally and then uploaded with `saved_model.pb` last; a server that looks in between
finds no graph and retries the load (TF Serving's --max_num_load_retries). A failed
upload removes what it wrote.

Signatures (batch size free, every output row for one image):
  serving_default  image_bytes: tf.string [batch], JPEG or PNG files of any size
  serve_images     images: tf.uint8 [batch, height, width, 3] RGB, any height/width
  outputs          probabilities: float32 [batch, classes]
                   top_k_indices: int32 [batch, k]
                   top_k_scores:  float32 [batch, k], highest first
                   top_k_labels:  tf.string [batch, k], class names

Both run `lambda_keras.data.preprocessing`'s evaluation transform (centre crop, bilinear
resize, ImageNet normalisation; for timm's models, named after timm's, timm's own:
shorter side resized bicubic, then the centre crop) in the graph, the function itself,
imported, so that serving sees the pixels the model was validated on. The graph is plain TensorFlow:
`tf.saved_model.load` runs it without lambda_keras, Keras or this repository.

Exit status 2 with a one-line message for a taken version or an unusable model path.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import keras
import tensorflow as tf

from lambda_keras import cli
from lambda_keras.cli import UserError
from lambda_keras.data import preprocessing
from lambda_keras.models.finite_weights import non_finite_weights
from lambda_keras.data.preprocessing import EvalTransform
from lambda_keras.models.variants import published_eval_transform

SERVING_DEFAULT = "serving_default"
SERVE_IMAGES = "serve_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT_KEYS = ("probabilities", "top_k_indices", "top_k_scores", "top_k_labels")

# The message every undecodable input fails with (an InvalidArgumentError, which TF
# Serving returns as HTTP 400 / gRPC INVALID_ARGUMENT with this text).
DECODE_ERROR = "The image could not be decoded: image_bytes must be a complete JPEG or PNG file"



# Every real photo fits (a 50 MP camera frame); a decompression bomb (a small PNG of
# 16000x16000) would take gigabytes to decode.
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_TOP_K = 5
# A gigapixel decodes to 3 GB: a cap above it protects nothing.
MAX_MAX_PIXELS = 1_000_000_000
TOO_LARGE_ERROR = "The image is too large to serve: its header declares more pixels than max_pixels"
# Other users (a TF Serving process) must read an export: folders rwxr-xr-x, files rw-r--r--.
DIRECTORY_MODE = 0o755
FILE_MODE = 0o644


class ExportError(UserError, ValueError):
    """A taken version, an unusable model path or arguments that do not fit the model."""


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """What an export serves besides the network: checked once, on creation.

    Attributes:
      model_name: the model's name on the server (BASE/NAME's NAME), in the warm-up requests.
      eval_transform: the evaluation transform serving applies to every image
        (`preprocessing.EvalTransform`: input size, crop padding, resize
        interpolation and order).
      classes: the model's output classes.
      class_names: one name per class.
      top_k: classes in the top_k_* outputs, in [1, classes].
      warmup: write assets.extra/tf_serving_warmup_requests.
      max_pixels: the largest image (height x width, read from the file's header
        before decoding) that serving_default decodes; larger ones are refused.

    Raises:
      ExportError: a value out of range or class names that do not fit the classes.
    """

    model_name: str
    eval_transform: EvalTransform
    classes: int
    class_names: tuple[str, ...]
    top_k: int
    warmup: bool
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.class_names) != self.classes:
            raise ExportError(f"{len(self.class_names)} class names for a model with {self.classes} classes.")
        if not 1 <= self.top_k <= self.classes:
            raise ExportError(f"top_k must be in [1, {self.classes}], not {self.top_k}.")
        if not 1 <= self.max_pixels <= MAX_MAX_PIXELS:
            raise ExportError(f"max_pixels must be in [1, {MAX_MAX_PIXELS}], not {self.max_pixels}.")


def export_model(
    model: keras.Model | str | os.PathLike,
    export_dir: str | os.PathLike,
    version: int | None = None,
    image_size: int | None = None,
    top_k: int | None = None,
    class_names: Sequence[str] | None = None,
    crop_padding: int | None = None,
    checkpoint: str = "last",
    warmup: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    eval_transform: EvalTransform | None = None,
) -> Path:
    """Writes `export_dir/<version>/`, a SavedModel for TF Serving (see the module doc).

    Args:
      model: a Keras model (e.g. the trainer's, holding the EMA weights after `fit`),
        a `.keras` file, or a training model_dir.
      export_dir: BASE/NAME, the model's directory on the server: a local path or
        a URL of a filesystem TensorFlow writes (``gs://...``); NAME is also the
        model name in the warm-up requests.
      version: positive integer; None takes the highest existing version + 1.
      image_size: serving resolution, replacing the evaluation transform's. A size
        other than the model's rebuilds it for that input (the weights must fit it).
      top_k: number of classes in the top_k_* outputs (at most the class count).
        Default: DEFAULT_TOP_K, or every class of a model with fewer.
      class_names: one name per class. Default: the ImageNet names for 1000 classes,
        else "class_<i>".
      crop_padding: evaluation crop padding, replacing the evaluation transform's.
      checkpoint: for a model_dir, which of checkpoints/{last,best}.keras to export.
      warmup: write assets.extra/tf_serving_warmup_requests.
      max_pixels: the largest image serving_default decodes (see `ServingSpec`).
      eval_transform: the evaluation transform serving applies
        (`preprocessing.EvalTransform`; the trainer passes its input config's).
        Default: a training model_dir's (its config.yaml), else the published
        weights' for a model named after one of timm's
        (`variants.published_eval_transform`, e.g. "lambda_resnet50ts": 256, bicubic,
        crop_pct 0.95), else bilinear crop-then-resize at the model's input size with
        padding 32 (the ImageNet recipe; at most the size).

    Returns:
      The version directory that was written (a ``Path``; a ``str`` for a URL).

    Raises:
      ExportError: the version exists, the path holds no model, a weight is not
        finite, or an argument does not fit the model. Nothing is left behind on any
        error.
    """
    run_config: dict[str, Any] = {}
    if not isinstance(model, keras.Model):
        model, run_config = load_model(model, checkpoint)
    diverged = non_finite_weights(model)
    if diverged:
        raise ExportError(f"{len(diverged)} weight(s) of the model are NaN or infinite, the first {diverged[0]}: "
                          "its training diverged; export a checkpoint from before the divergence.")
    eval_transform = serving_transform(model, run_config, eval_transform, image_size, crop_padding)
    url = _is_url(export_dir)
    export_dir = str(export_dir).rstrip("/") if url else Path(export_dir)
    # The class count does not depend on the input size: bad arguments are refused before the copy is built.
    classes = model.output_shape[-1]
    spec = ServingSpec(
        model_name=export_dir.rsplit("/", 1)[-1] if url else export_dir.name,
        eval_transform=eval_transform, classes=classes,
        class_names=class_names if class_names is not None else default_class_names(classes),
        top_k=min(DEFAULT_TOP_K, classes) if top_k is None else top_k, warmup=warmup, max_pixels=max_pixels,
    )
    serving_model = float32_copy(model, eval_transform.image_size)

    if url:
        return _export_to_url(export_dir, version, serving_model, spec)
    export_dir.mkdir(parents=True, exist_ok=True)
    version = _choose_version(export_dir, version)
    final = export_dir / str(version)
    # Same directory as the final one, so the rename is atomic (one filesystem).
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=export_dir))
    try:
        _write_version(staging, serving_model, spec)
        _make_readable_by_all(staging)
        if final.exists():  # another exporter took the number meanwhile
            raise ExportError(f"Version {version} appeared in {export_dir} during the export.")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def serving_transform(model: keras.Model, run_config: dict[str, Any], eval_transform: EvalTransform | None,
                       image_size: int | None, crop_padding: int | None) -> EvalTransform:
    """The one transform serving applies: `eval_transform`, else the training run's
    (its config.yaml), else the published weights' for a model named after them, else
    bilinear crop-then-resize at the model's input size with padding 32; `image_size` and
    `crop_padding` given explicitly replace that transform's own."""
    size = image_size or model.input_shape[1]
    try:
        if eval_transform is None and run_config:
            eval_transform = EvalTransform.from_input_config(run_config)
        eval_transform = eval_transform or published_eval_transform(model.name)
        if eval_transform is None:
            if not size:
                raise KeyError("the model's input size is not fixed: pass image_size")
            eval_transform = EvalTransform(size, min(32, size))
        changes = {key: value for key, value in (("image_size", image_size), ("crop_padding", crop_padding))
                   if value is not None}
        return eval_transform.replace(**changes)
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(f"The evaluation transform does not hold: {error}") from None


def _make_readable_by_all(directory: Path) -> None:
    """Gives the export (mkdtemp makes it rwx------) the modes a server run by another user reads."""
    directory.chmod(DIRECTORY_MODE)
    for path in directory.rglob("*"):
        path.chmod(DIRECTORY_MODE if path.is_dir() else FILE_MODE)


def _write_version(directory: Path, serving_model: keras.Model, spec: ServingSpec) -> None:
    archive = build_archive(serving_model, spec)
    archive.write_out(str(directory), verbose=False)
    if spec.warmup:
        from export import warmup as warmup_lib  # needs tensorflow-serving-api

        warmup_lib.write_warmup_requests(
            directory, model_name=spec.model_name,
            image_size=spec.eval_transform.image_size + spec.eval_transform.crop_padding
        )


def _export_to_url(export_dir: str, version: int | None, serving_model: keras.Model, spec: ServingSpec) -> str:
    """The export to an object store: written locally, uploaded graph last."""
    tf.io.gfile.makedirs(export_dir)
    version = _choose_version(export_dir, version)
    final = f"{export_dir}/{version}"
    with tempfile.TemporaryDirectory(prefix=f"lambda-keras-export-{version}-") as staging:
        _write_version(Path(staging), serving_model, spec)
        if tf.io.gfile.exists(final):
            raise ExportError(f"Version {version} appeared in {export_dir} during the export.")
        files = sorted(path for path in Path(staging).rglob("*") if path.is_file())
        # saved_model.pb last: a version without its graph is not a model to a server.
        files.sort(key=lambda path: path.name == "saved_model.pb")
        try:
            for path in files:
                target = f"{final}/{path.relative_to(staging).as_posix()}"
                tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
                tf.io.gfile.copy(str(path), target, overwrite=False)
        except BaseException:
            if tf.io.gfile.exists(final):
                tf.io.gfile.rmtree(final)
            raise
    return final


def load_model(path: str | os.PathLike, checkpoint: str = "last") -> tuple[keras.Model, dict]:
    """Loads a `.keras` file or a training model_dir's checkpoint.

    Returns:
      The model and, for a model_dir, its config.yaml `input` section ({} otherwise).
    """
    # Registers LambdaLayer, StochasticDepth, ... for deserialisation. Export time only:
    # the SavedModel itself does not need the package.
    import lambda_keras.models  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    path = Path(path)
    run_config: dict[str, Any] = {}
    if path.is_dir():
        config_path = path / "config.yaml"
        if config_path.exists():
            import yaml  # pylint: disable=import-outside-toplevel

            try:
                run_config = (yaml.safe_load(config_path.read_text("utf-8")) or {}).get("input", {})
                if not isinstance(run_config, dict):
                    raise AttributeError("its input section is not a mapping")
            except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as error:
                raise ExportError(f"{config_path} is not the config.yaml a training run writes "
                                  f"({type(error).__name__}); restore it or export the .keras file.") from None
        if checkpoint not in ("last", "best"):
            raise ExportError(f"checkpoint must be last or best, not {checkpoint!r}.")
        path = path / "checkpoints" / f"{checkpoint}.keras"
    if path.suffix != ".keras" or not path.is_file():
        raise ExportError(f"{path} is not a .keras file (pass a .keras file or a model_dir "
                          "with checkpoints/last.keras).")
    try:
        return keras.saving.load_model(path, compile=False), run_config
    except Exception as error:  # Keras reports a damaged archive in many ways (zip, h5, json).
        raise ExportError(f"{path} is not a readable .keras model ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else 'no message'}).") from None


def float32_copy(model: keras.Model, image_size: int | None = None) -> keras.Model:
    """The same network and weights with every layer in float32, outside any strategy.

    A model trained under mixed_bfloat16 / mixed_float16 stores float32 weights but
    computes in 16 bits; serving computes in float32 for the accuracy the weights
    allow on CPUs and GPUs alike. The copy is made from the model's own layer configs
    (``keras.models.clone_model``), so any saved model serves, not only one a training
    config describes; it also drops the distribution strategy the trainer's variables
    live in (call it outside ``strategy.scope()``).

    Args:
      model: a Functional or Sequential Keras model.
      image_size: input height and width of the copy; None keeps the model's.

    Returns:
      A new model, [batch, size, size, 3] float32 -> the model's output.
    """
    input_shape = model.input_shape[1:]
    if image_size is not None:
        input_shape = (image_size, image_size, input_shape[-1])

    def float32_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    previous = keras.config.dtype_policy()
    # Sublayers that a layer creates in its constructor take the global policy.
    keras.config.set_dtype_policy("float32")
    try:
        copy = keras.models.clone_model(
            model, input_tensors=keras.Input(input_shape, name=model.inputs[0].name), clone_function=float32_layer
        )
        copy.set_weights(model.get_weights())
    finally:
        keras.config.set_dtype_policy(previous)
    return copy


def build_archive(model: keras.Model, spec: ServingSpec) -> keras.export.ExportArchive:
    """The ExportArchive with the two signatures (module doc) around a float32 model.

    `model` maps float32 [batch, image_size, image_size, 3] normalised images (the
    spec's transform's size) to [batch, classes] probabilities (softmax classifier) or
    logits (no activation).
    """
    image_size, crop_padding, top_k = spec.eval_transform.image_size, spec.eval_transform.crop_padding, spec.top_k
    transform = {"interpolation": spec.eval_transform.interpolation, "resize_first": spec.eval_transform.resize_first}
    activation = getattr(model.layers[-1], "activation", None)
    activation_name = getattr(activation, "__name__", None)
    if activation_name not in ("softmax", "linear"):
        raise ExportError(f"The model ends in a {activation_name!r} activation; serving "
                          "needs softmax probabilities or logits.")
    labels = tf.constant(list(spec.class_names), tf.string)
    image_spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    def classify(images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model(images, training=False)
        probabilities = outputs if activation_name == "softmax" else tf.nn.softmax(outputs)
        scores, indices = tf.math.top_k(probabilities, k=top_k)
        return {
            "probabilities": probabilities,
            "top_k_indices": indices,
            "top_k_scores": scores,
            "top_k_labels": tf.gather(labels, indices),
        }

    def preprocess_encoded(image_bytes: tf.Tensor) -> tf.Tensor:
        """One JPEG or PNG (scalar tf.string) -> float32 [image_size, image_size, 3]."""
        is_jpeg = tf.strings.substr(image_bytes, 0, 3) == b"\xff\xd8\xff"
        # The decode kernels' own errors ("Invalid JPEG data or crop window", "Input
        # is empty") do not tell a client what was wrong; a truncated file is the
        # common case, and the structural checks catch it before decoding.
        check = tf.debugging.Assert(preprocessing.is_servable_image(image_bytes), [DECODE_ERROR])
        with tf.control_dependencies([check]):
            pixels = tf.cond(is_jpeg, lambda: _jpeg_pixels(image_bytes), lambda: _png_pixels(image_bytes))
        size_check = tf.debugging.Assert(pixels <= spec.max_pixels, [TOO_LARGE_ERROR, spec.max_pixels])
        with tf.control_dependencies([size_check]):
            return tf.cond(
                is_jpeg,
                lambda: preprocessing.preprocess_for_eval(image_bytes, image_size, crop_padding, **transform),
                lambda: preprocessing.preprocess_decoded_for_eval(
                    tf.io.decode_png(image_bytes, channels=3), image_size, crop_padding, **transform
                ),
            )

    def classify_batch(images: tf.Tensor) -> dict[str, tf.Tensor]:
        """`classify`, or empty outputs for an empty batch (which the network cannot run)."""
        return tf.cond(tf.shape(images)[0] > 0, lambda: classify(images), empty_outputs)

    def empty_outputs() -> dict[str, tf.Tensor]:
        return {
            "probabilities": tf.zeros([0, spec.classes], tf.float32),
            "top_k_indices": tf.zeros([0, top_k], tf.int32),
            "top_k_scores": tf.zeros([0, top_k], tf.float32),
            "top_k_labels": tf.zeros([0, top_k], tf.string),
        }

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(preprocess_encoded, image_bytes, fn_output_signature=image_spec)
        return classify_batch(images)

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        preprocessed = tf.map_fn(
            lambda image: preprocessing.preprocess_decoded_for_eval(image, image_size, crop_padding, **transform),
            images,
            fn_output_signature=image_spec,
        )
        return classify_batch(preprocessed)

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also what ExportArchive aliases as serving_default; naming
    # it so makes the alias unnecessary.
    archive.add_endpoint(
        SERVING_DEFAULT, serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
    )
    archive.add_endpoint(
        SERVE_IMAGES, serve_images,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)],
    )
    return archive


def _jpeg_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """Height x width of a JPEG, int64, from its header (nothing is decoded)."""
    shape = tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int64)
    return shape[0] * shape[1]


def _png_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """Height x width of a PNG, int64, from its IHDR chunk (bytes 16-23, big-endian)."""
    fields = tf.io.decode_raw(tf.strings.substr(image_bytes, 16, 8), tf.uint8)
    fields = tf.cast(tf.reshape(fields, [2, 4]), tf.int64)
    width, height = tf.unstack(tf.reduce_sum(fields * tf.constant([2**24, 2**16, 2**8, 1], tf.int64), axis=1))
    return width * height


def default_class_names(classes: int) -> list[str]:
    """ImageNet class names for 1000 classes, else "class_0", "class_1", ..."""
    if classes == 1000:
        from lambda_keras import imagenet_utils  # pylint: disable=import-outside-toplevel

        return [name for _, name in imagenet_utils.imagenet_classes()]
    return [f"class_{index}" for index in range(classes)]


def existing_versions(export_dir: str | os.PathLike) -> list[int]:
    """The version numbers (integer-named subdirectories) under BASE/NAME, sorted.

    BASE/NAME is a local path or a URL TensorFlow's filesystems read (``gs://``).
    """
    export_dir = str(export_dir).rstrip("/")
    if not tf.io.gfile.isdir(export_dir):
        return []
    # Object stores list directories with a trailing slash.
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(export_dir))
    return sorted(int(name) for name in names
                  if name.isdigit() and tf.io.gfile.isdir(f"{export_dir}/{name}"))


def _choose_version(export_dir: Path | str, version: int | None) -> int:
    taken = existing_versions(export_dir)
    if version is None:
        return max(taken, default=0) + 1
    if version < 1:
        raise ExportError(f"--version must be a positive integer, not {version}.")
    if version is not None and version >= 2**63:
        raise ExportError(f"--version {version}: TF Serving's versions are 64-bit integers.")
    if version in taken or tf.io.gfile.exists(f"{export_dir}/{version}"):
        raise ExportError(f"Version {version} already exists in {export_dir}; versions are "
                          f"never overwritten (next free: {max(taken, default=0) + 1}).")
    return version


def _is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m export.saved_model",
        description="Export a .keras model or a training model_dir for TF Serving.",
    )
    parser.add_argument("--model", required=True, help=".keras file or training model_dir")
    parser.add_argument("--output", required=True, help="BASE/NAME; writes BASE/NAME/<version>/")
    parser.add_argument("--version", type=cli.integer_at_least(1), help="default: the next free version number")
    parser.add_argument("--image_size", type=cli.integer_at_least(1), help="default: the training image size")
    parser.add_argument("--crop_padding", type=cli.integer_at_least(0), help="default: the training eval_crop_padding")
    parser.add_argument("--top_k", type=cli.integer_at_least(1),
                        help=f"classes in the top_k_* outputs (default: {DEFAULT_TOP_K}, or all of fewer)")
    parser.add_argument("--max_pixels", type=cli.integer_at_least(1), default=DEFAULT_MAX_PIXELS,
                        help="largest image (height x width) serving_default decodes (default: 50 MP)")
    parser.add_argument("--class_names", help="text file, one class name per line")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",
                        help="which checkpoint of a model_dir (default: last)")
    return parser.parse_args(argv)


@cli.entry_point("python -m export.saved_model")
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    class_names = None
    if args.class_names:
        try:
            class_names = [line for line in Path(args.class_names).read_text("utf-8").splitlines() if line]
        except (OSError, UnicodeDecodeError) as error:
            raise ExportError(f"--class_names {args.class_names}: {error}") from None
    path = export_model(
        args.model, args.output, version=args.version, image_size=args.image_size,
        top_k=args.top_k, class_names=class_names, crop_padding=args.crop_padding,
        checkpoint=args.checkpoint, max_pixels=args.max_pixels,
    )
    print(f"Exported {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
