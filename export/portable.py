"""Export a trained model as one ONNX or LiteRT file, checked in its own runtime.

Usage:
  python -m export.portable --model PATH --output FILE --format onnx|litert
      [--quantize none|dynamic|int8] [--data_dir DIR] [--calibration_examples N]
      [--evaluate] [--image_size S] [--crop_padding P] [--checkpoint last|best]

PATH is a `.keras` file or a training model_dir, as for `export.saved_model`. FILE
ends in `.onnx` (``--format onnx``) or `.tflite` (``--format litert``); beside it
`FILE.input_contract.json` tells a client what the file takes and returns.
Neither is ever overwritten: an existing FILE is refused.

The graph (both formats):
  input   float32 [batch, S, S, 3], RGB pixel values in [0, 255], already resized
          and centre-cropped by the model's evaluation transform (the contract's
          `resize`: `lambda_keras.data.preprocessing.EvalTransform`);
  inside  the ImageNet mean/std normalisation, then the float32 network;
  output  float32 [batch, classes], what the model ends in (softmax probabilities,
          or logits for a model without an activation).
Decoding, resizing and cropping stay outside: neither ONNX's nor LiteRT's builtin ops
decode a JPEG, and a resize inside would tie the file to one input size.

LiteRT files hold builtin ops only (no TF Select / Flex ops): the conversion refuses
anything else, and the lambda layers trace their builtin-only form
(`lambda_keras.layers.kernel_support.builtin_ops_only`). ``--quantize`` (LiteRT only):
``dynamic`` stores the weights in int8 (dynamic-range quantization); ``int8`` makes
every op int8 (full integer quantization; the input and output stay float32, so the
contract holds), calibrated on ``--calibration_examples`` images of ``--data_dir``'s
train split (TFRecord shards as `lambda_keras.data.records` writes them), prepared by
the evaluation transform.

Right after writing, the file is loaded in its runtime (ONNX Runtime; the
`ai-edge-litert` interpreter, which links no Flex delegate) and run on sample images
(a fixed synthetic set, plus the calibration images when given); a float file whose
outputs differ from Keras's by more than FLOAT_TOLERANCE is refused (for a softmax
output, the difference of the log-probabilities, which is that of the logits; a
quantized file's probabilities, which may round to 0, are compared as they are). ``--evaluate``
also prints the top-1 of Keras and of the file on ``--data_dir``'s validation split.
The file and its contract are written under temporary names and renamed into place
only after that check, so nothing half-written or unchecked is left.

Exit status 2 with a one-line message for a missing runtime, an unusable path or
model, a Flex op, or a failed check; all are refused before anything is written where
they can be known in advance.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from export.saved_model import (
    ExportError,
    default_class_names,
    float32_copy,
    load_model,
    serving_transform,
)
from lambda_keras import cli
from lambda_keras.atomic_files import written_atomically
from lambda_keras.data import manifest, preprocessing, records
from lambda_keras.data.preprocessing import EvalTransform
from lambda_keras.layers import kernel_support
from lambda_keras.models.finite_weights import non_finite_weights

FORMATS = ("onnx", "litert")
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}
QUANTIZATIONS = ("none", "dynamic", "int8")
# The Python packages each format's conversion and check import (import name: distribution).
RUNTIMES = {
    "onnx": {"tf2onnx": "tf2onnx", "onnx": "onnx", "onnxruntime": "onnxruntime"},
    "litert": {"ai_edge_litert": "ai-edge-litert"},
}
CONTRACT_SUFFIX = ".input_contract.json"
# Largest |file - Keras| on any output of a float export's sample images.
FLOAT_TOLERANCE = 1e-4
SAMPLE_IMAGES = 4
DEFAULT_CALIBRATION_EXAMPLES = 200
INPUT_NAME = "pixels"


@dataclasses.dataclass(frozen=True)
class PortableExport:
    """What `export_portable` wrote and measured.

    Attributes:
      path: the model file.
      contract_path: its input contract (JSON, described in docs/serving.md).
      max_abs_difference: largest |file - Keras| over the sample images' outputs.
      top1_agreement: share of sample images whose top class is Keras's.
      samples: how many sample images were compared.
    """

    path: Path
    contract_path: Path
    max_abs_difference: float
    top1_agreement: float
    samples: int


def contract_path_for(path: str | os.PathLike) -> Path:
    """`<dir>/<name>.input_contract.json` for the model file `<dir>/<name>` (the whole
    name: `m.onnx` and `m.tflite` side by side have a contract each)."""
    path = Path(path)
    return path.with_name(path.name + CONTRACT_SUFFIX)


def check_runtime(export_format: str) -> None:
    """Refuses, in one line, a format whose converter or runtime is not installed.

    Raises:
      ExportError: an unknown format or a missing package (named, with the extra).
    """
    if export_format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {export_format!r}.")
    missing = [package for module, package in RUNTIMES[export_format].items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportError(f"The {export_format} export needs {', '.join(missing)}, which is not installed: "
                          "pip install 'lambda-keras[deploy]' (docs/install.md).")


def check_output(path: str | os.PathLike, export_format: str) -> Path:
    """The output file, refused before any work if it cannot be written as a new file.

    Raises:
      ExportError: a suffix that is not the format's, an existing file or contract,
        or a folder that is missing or not writable.
    """
    path = Path(path)
    suffix = SUFFIXES[export_format]
    if path.suffix != suffix:
        raise ExportError(f"--output {path}: a {export_format} file must end in {suffix}.")
    for target in (path, contract_path_for(path)):
        if target.exists():
            raise ExportError(f"{target} exists; exports are never overwritten (choose another --output).")
    folder = path.parent
    if not folder.is_dir():
        raise ExportError(f"--output {path}: {folder} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"--output {path}: the folder {folder} is not writable.")
    return path


def portable_model(model: keras.Model, image_size: int) -> keras.Model:
    """The network as the file holds it: pixels in, the model's outputs out.

    Args:
      model: a Keras classifier, float32 [batch, S, S, 3] normalised images ->
        [batch, classes].
      image_size: S, the input height and width.

    Returns:
      A float32 model, [batch, S, S, 3] RGB pixels in [0, 255] -> [batch, classes]:
      the ImageNet normalisation (`preprocessing.normalize_image`'s constants), then
      a float32 copy of `model`.
    """
    network = float32_copy(model, image_size)
    pixels = keras.Input((image_size, image_size, 3), name=INPUT_NAME, dtype="float32")
    # Rescaling holds its constants as Python numbers: Normalization's are captured
    # tensors, which tf2onnx turns into inputs of the graph.
    scale = [1.0 / std for std in preprocessing.STDDEV_RGB]
    normalised = keras.layers.Rescaling(
        scale=scale, offset=[-mean * factor for mean, factor in zip(preprocessing.MEAN_RGB, scale)],
        name="imagenet_normalization",
    )(pixels)
    return keras.Model(pixels, network(normalised), name=f"{model.name}_pixels")


def sample_images(image_size: int, count: int = SAMPLE_IMAGES, seed: int = 0) -> np.ndarray:
    """float32 [count, S, S, 3] in [0, 255]: smooth random colour patterns, a fixed set."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (count, 4, 4, 3)).astype(np.float32)
    return tf.image.resize(coarse, [image_size, image_size], method="bilinear").numpy()


def record_pixels(data_dir: str, split: str, transform: EvalTransform, limit: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of a TFRecord folder, as the file takes them.

    Each record's JPEG goes through the evaluation preprocessing of the input pipeline
    (`preprocessing.preprocess_for_eval` with `transform`); its normalisation is then
    undone, since the file normalises itself.

    Args:
      data_dir: a folder of `<split>-NNNNN-of-NNNNN` shards (`records.shard_name`).
      split: "train" or "validation".
      transform: the evaluation transform.
      limit: read at most this many records (in file order), None for all.

    Returns:
      pixels: float32 [n, S, S, 3] in [0, 255]; labels: int64 [n], class indices
      (stored label minus the manifest's first label, 1 without a manifest).

    Raises:
      ExportError: no shards of the split in data_dir.
    """
    files = sorted(str(path) for path in Path(data_dir).glob(f"{split}-*")
                   if records.parse_shard_name(path.name) is not None)
    if not files:
        raise ExportError(f"--data_dir {data_dir} holds no {split}-NNNNN-of-NNNNN shards.")
    folder_manifest = manifest.read_manifest(data_dir)
    first_label = 1 if folder_manifest is None else folder_manifest.first_label
    scale = np.array(preprocessing.STDDEV_RGB, np.float32)
    offset = np.array(preprocessing.MEAN_RGB, np.float32)

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image_bytes, label = records.parse_example(serialized)
        image = preprocessing.preprocess_for_eval(
            image_bytes, transform.image_size, transform.crop_padding,
            interpolation=transform.interpolation, resize_first=transform.resize_first)
        return image * scale + offset, label - first_label

    dataset = tf.data.TFRecordDataset(files).map(parse)
    if limit is not None:
        dataset = dataset.take(limit)
    pixels, labels = [], []
    for image_batch, label_batch in dataset.batch(64):
        pixels.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(pixels), np.concatenate(labels)


class Runtime:
    """A written file loaded in its own runtime: `run(pixels) -> outputs`, float32."""

    def __init__(self, path: str, export_format: str):
        self.format = export_format
        if export_format == "onnx":
            import onnxruntime  # pylint: disable=import-outside-toplevel

            self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.input_name = self._session.get_inputs()[0].name
            self.output_name = self._session.get_outputs()[0].name
        else:
            from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

            # The interpreter links no Flex delegate: a Select TF op would fail here.
            self._interpreter = Interpreter(model_path=path)
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self.input_name, self.output_name = self._input["name"], self._output["name"]
            self._batch = None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [n, S, S, 3] pixels -> float32 [n, classes]."""
        pixels = np.ascontiguousarray(pixels, np.float32)
        if self.format == "onnx":
            return self._session.run([self.output_name], {self.input_name: pixels})[0]
        if self._batch != len(pixels):
            self._interpreter.resize_tensor_input(self._input["index"], pixels.shape)
            self._interpreter.allocate_tensors()
            self._batch = len(pixels)
        self._interpreter.set_tensor(self._input["index"], pixels)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()

    def version(self) -> str:
        """"onnxruntime 1.32.0" or "ai-edge-litert 2.3.0"."""
        package = "onnxruntime" if self.format == "onnx" else "ai-edge-litert"
        return f"{package} {importlib.metadata.version(package)}"


def predict_in_batches(predict: Any, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """`predict` ([n, S, S, 3] -> [n, classes]) over `pixels` in batches of at most `batch_size`."""
    return np.concatenate([np.asarray(predict(pixels[start:start + batch_size]))
                           for start in range(0, len(pixels), batch_size)])


def export_portable(
    model: keras.Model | str | os.PathLike,
    output: str | os.PathLike,
    export_format: str,
    quantization: str = "none",
    calibration_images: np.ndarray | None = None,
    image_size: int | None = None,
    crop_padding: int | None = None,
    checkpoint: str = "last",
    eval_transform: EvalTransform | None = None,
) -> PortableExport:
    """Writes `output` (ONNX or LiteRT) and its input contract, checked (module doc).

    Args:
      model: a Keras classifier, a `.keras` file or a training model_dir.
      output: the file to write, ending in `.onnx` or `.tflite`; must not exist.
      export_format: "onnx" or "litert".
      quantization: "none"; for LiteRT also "dynamic" or "int8" (module doc).
      calibration_images: float32 [n, S, S, 3] pixels as the file takes them
        (`record_pixels`): the representative set of "int8" (required there), and
        more sample images for the check.
      image_size, crop_padding, checkpoint, eval_transform: as for
        `export.saved_model.export_model`.

    Returns:
      What was written and how close it came to Keras.

    Raises:
      ExportError: a missing runtime, an unusable output or model, an argument that
        does not fit the format, an op without a builtin, or a float file farther
        than FLOAT_TOLERANCE from Keras. Nothing is left behind on any error.
    """
    check_runtime(export_format)
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}.")
    if quantization != "none" and export_format != "litert":
        raise ExportError(f"--quantize {quantization} is a LiteRT quantization; the onnx export is float32.")
    if quantization == "int8" and (calibration_images is None or not len(calibration_images)):
        raise ExportError("--quantize int8 needs calibration images (--data_dir).")
    path = check_output(output, export_format)

    run_config: dict[str, Any] = {}
    if not isinstance(model, keras.Model):
        model, run_config = load_model(model, checkpoint)
    diverged = non_finite_weights(model)
    if diverged:
        raise ExportError(f"{len(diverged)} weight(s) of the model are NaN or infinite, the first {diverged[0]}.")
    transform = serving_transform(model, run_config, eval_transform, image_size, crop_padding)
    size = transform.image_size
    if calibration_images is not None and tuple(calibration_images.shape[1:]) != (size, size, 3):
        raise ExportError(f"Calibration images of shape {tuple(calibration_images.shape[1:])} for a "
                          f"{size}x{size}x3 input.")
    network = portable_model(model, size)
    samples = sample_images(size)
    if calibration_images is not None:
        samples = np.concatenate([samples, calibration_images[:60].astype(np.float32)])
    expected = predict_in_batches(lambda batch: network(batch, training=False), samples)

    contract_path = contract_path_for(path)
    with written_atomically(str(path), path.suffix) as temp_model:
        _convert(network, temp_model, export_format, quantization, calibration_images)
        try:
            runtime = Runtime(temp_model, export_format)
            actual = predict_in_batches(runtime.run, samples)
        except Exception as error:  # each runtime reports a graph it cannot run in its own way
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ExportError(f"The {export_format} file does not run in its runtime: {message}") from None
        # A quantized file's probabilities may round to 0: compared as they are.
        difference = output_difference(actual, expected,
                                       quantization == "none" and output_kind(model) == "probabilities")
        agreement = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
        if not np.all(np.isfinite(actual)) or actual.shape != expected.shape:
            raise ExportError(f"The {export_format} file gives outputs of shape {actual.shape} with "
                              f"non-finite values; Keras gives {expected.shape}.")
        if quantization == "none" and difference > FLOAT_TOLERANCE:
            raise ExportError(f"The {export_format} file differs from Keras by {difference:.3g} "
                              f"(> {FLOAT_TOLERANCE}) on {len(samples)} sample images; nothing was written.")
        contract = input_contract(model, network, path.name, export_format, quantization, transform, runtime,
                                  difference, agreement, len(samples))
        with written_atomically(str(contract_path)) as temp_contract:
            Path(temp_contract).write_text(json.dumps(contract, indent=2) + "\n", "utf-8")
    return PortableExport(path, contract_path, difference, agreement, len(samples))


def _convert(network: keras.Model, path: str, export_format: str, quantization: str,
             calibration_images: np.ndarray | None) -> None:
    """Writes `network` to `path` in the format, builtin ops only."""
    with kernel_support.builtin_ops_only():
        if export_format == "onnx":
            network.export(path, format="onnx", verbose=False)
            return
        options: dict[str, Any] = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
        if quantization != "none":
            options["optimizations"] = [tf.lite.Optimize.DEFAULT]
        if quantization == "int8":
            def representative_dataset() -> Iterable[list[np.ndarray]]:
                for image in calibration_images:
                    yield [image[None].astype(np.float32)]

            options["representative_dataset"] = representative_dataset
            options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
        try:
            network.export(path, format="litert", verbose=False, **options)
        except Exception as error:  # the converter reports an op without a builtin as a ConverterError
            if type(error).__name__ != "ConverterError":
                raise
            ops_line = next((line for line in str(error).splitlines() if "neither a custom op nor a flex op" in line
                             or "not supported" in line), str(error).splitlines()[0])
            raise ExportError(f"The model needs an op LiteRT has no builtin for: {ops_line.strip()[:300]}") from None


def output_kind(model: keras.Model) -> str:
    """"probabilities" for a model ending in a softmax, else "logits"."""
    activation = getattr(getattr(model.layers[-1], "activation", None), "__name__", None)
    return "probabilities" if activation == "softmax" else "logits"


def output_difference(actual: np.ndarray, expected: np.ndarray, probabilities: bool) -> float:
    """max |file - Keras| over [n, classes] outputs; for probabilities, of their logarithms.

    An untrained 1000-class model's probabilities are all near 1e-3, where a wrong
    logit moves them by less than any tolerance; in log space the difference is that
    of the logits.
    """
    if probabilities:
        smallest = np.finfo(np.float32).tiny
        actual, expected = np.log(np.maximum(actual, smallest)), np.log(np.maximum(expected, smallest))
    return float(np.max(np.abs(actual - expected)))


def input_contract(model: keras.Model, network: keras.Model, file_name: str, export_format: str, quantization: str,
                   transform: EvalTransform, runtime: Runtime, difference: float, agreement: float,
                   samples: int) -> dict[str, Any]:
    """The JSON written beside the file (docs/serving.md, "ONNX and LiteRT files")."""
    classes = network.output_shape[-1]
    return {
        "file": file_name,
        "format": export_format,
        "quantization": quantization,
        "input": {
            "name": runtime.input_name,
            "dtype": "float32",
            "shape": [None, transform.image_size, transform.image_size, 3],
            "layout": "NHWC",
            "channels": "RGB",
            "range": [0, 255],
        },
        "resize": {
            "image_size": transform.image_size,
            "crop_padding": transform.crop_padding,
            "interpolation": transform.interpolation,
            "resize_first": transform.resize_first,
            "steps": ("resize the shorter side to image_size + crop_padding, then crop the centre "
                      "image_size square" if transform.resize_first else
                      "crop the centre square of side min(height, width) * image_size / "
                      "(image_size + crop_padding), then resize it to image_size"),
        },
        "in_graph": {
            "normalization": "(pixels - mean) / std per channel",
            "mean": list(preprocessing.MEAN_RGB),
            "std": list(preprocessing.STDDEV_RGB),
        },
        "output": {
            "name": runtime.output_name,
            "dtype": "float32",
            "shape": [None, classes],
            "kind": output_kind(model),
            "class_names": default_class_names(classes),
        },
        "check": {
            "runtime": runtime.version(),
            "sample_images": samples,
            "max_abs_difference_from_keras": difference,
            "top1_agreement_with_keras": agreement,
        },
    }


def top1(predict: Any, pixels: np.ndarray, labels: np.ndarray) -> float:
    """Share of `pixels` whose highest output is the label: `predict` [n, S, S, 3] -> [n, classes]."""
    return float(np.mean(predict_in_batches(predict, pixels).argmax(axis=1) == labels))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m export.portable",
        description="Export a .keras model or a training model_dir as one ONNX or LiteRT file.",
    )
    parser.add_argument("--model", required=True, help=".keras file or training model_dir")
    parser.add_argument("--output", required=True, help="the file to write: .onnx or .tflite (never overwritten)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="LiteRT only: dynamic (int8 weights) or int8 (every op; needs --data_dir)")
    parser.add_argument("--data_dir", help="TFRecord shards: train-* calibrate int8, validation-* --evaluate")
    parser.add_argument("--calibration_examples", type=cli.integer_at_least(1), default=DEFAULT_CALIBRATION_EXAMPLES,
                        help=f"train images that calibrate int8 (default: {DEFAULT_CALIBRATION_EXAMPLES})")
    parser.add_argument("--evaluate", action="store_true",
                        help="print the top-1 of Keras and of the file on --data_dir's validation split")
    parser.add_argument("--image_size", type=cli.integer_at_least(1), help="default: the training image size")
    parser.add_argument("--crop_padding", type=cli.integer_at_least(0), help="default: the training eval_crop_padding")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",
                        help="which checkpoint of a model_dir (default: last)")
    args = parser.parse_args(argv)
    if (args.quantize == "int8" or args.evaluate) and not args.data_dir:
        raise ExportError("--quantize int8 and --evaluate need --data_dir (TFRecord shards).")
    return args


@cli.entry_point("python -m export.portable")
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # What can be refused without the model is refused before it loads.
    check_runtime(args.format)
    check_output(args.output, args.format)
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise ExportError(f"--data_dir {args.data_dir} is not a folder.")
    model, run_config = load_model(args.model, args.checkpoint)
    transform = serving_transform(model, run_config, None, args.image_size, args.crop_padding)
    calibration = None
    if args.quantize == "int8":
        calibration, _ = record_pixels(args.data_dir, "train", transform, args.calibration_examples)
    result = export_portable(model, args.output, args.format, args.quantize, calibration,
                             eval_transform=transform)
    print(f"Exported {result.path} and {result.contract_path.name}: max |{args.format} - Keras| "
          f"{result.max_abs_difference:.3g}, top-1 agreement {result.top1_agreement:.1%} "
          f"on {result.samples} sample images")
    if args.evaluate:
        pixels, labels = record_pixels(args.data_dir, "validation", transform)
        network = portable_model(model, transform.image_size)
        keras_top1 = top1(lambda batch: network(batch, training=False), pixels, labels)
        file_top1 = top1(Runtime(str(result.path), args.format).run, pixels, labels)
        print(f"Validation top-1 on {len(labels)} images: Keras {keras_top1:.2%}, "
              f"{args.format} ({args.quantize}) {file_top1:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
