"""ONNX and LiteRT files (export/portable.py): each format's runtime gives Keras's
outputs, builtin LiteRT ops only, int8 accuracy on the digits, refusals in one line.

A model family joins the parity tests with one entry in MODELS (a builder of a small
classifier, [batch, S, S, 3] -> [batch, classes]). The parity is checked here apart from
the export's own check: the file is loaded again and compared with the original Keras
model on normalised images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import portable
from export.saved_model import ExportError
from lambda_keras.data import preprocessing
from lambda_keras.data.preprocessing import EvalTransform
from lambda_keras.layers import LambdaLayer, SymmetricMaxPooling2D, kernel_support
from lambda_keras.models import LambdaMobileNetV2
from random_weights import randomize
from tests import test_export

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the ONNX and LiteRT exports trace TensorFlow graphs")

LAYER_SIZE = 8
IMPLEMENTATIONS = ("einsum", "conv", "banded")


def lambda_layer_model(implementation: str) -> keras.Model:
    """The layer alone (with the position bias, whose new axis was a Flex op, and the
    stride-2 pool): [batch, 8, 8, 3] -> the layer's [batch, 4, 4, 16] outputs, flattened."""
    keras.utils.set_random_seed(0)
    pixels = keras.Input((LAYER_SIZE, LAYER_SIZE, 3))
    features = LambdaLayer(16, key_dim=8, num_heads=4, scope_size=5, strides=2, use_position_bias=True,
                           implementation=implementation)(pixels)
    model = keras.Model(pixels, keras.layers.Flatten()(features))
    layer = model.layers[1]
    layer.position_bias.assign(np.linspace(-1, 1, layer.position_bias.shape[0]).astype(np.float32))
    return model


MODELS: dict[str, Callable[[], keras.Model]] = {
    "lambda_resnet": test_export.tiny_model,
    "lambda_mobilenet_v2": lambda: lambda_mobilenet_v2(),
}


def lambda_mobilenet_v2() -> keras.Model:
    """LambdaMobileNetV2 at a quarter width and 64x64 (its lambda blocks at 4x4 and 2x2),
    random weights, up to its second lambda block, pooled: [batch, 64, 64, 3] -> [batch, 40].

    An untrained MobileNetV2's activations fade out before the classifier (its softmax
    is uniform to the last bit, keras.applications' too), which would make any file
    match; here zeroing the first lambda layer moves the outputs by 1.5e-3.
    """
    model = LambdaMobileNetV2(alpha=0.25, input_shape=(64, 64, 3), classes=10)
    randomize(model, scale=0.3)
    pooled = keras.layers.GlobalAveragePooling2D()(model.get_layer("block_15_add").output)
    return keras.Model(model.input, pooled)


def keras_outputs(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """The original model on the evaluation normalisation of `pixels` ([n, S, S, 3] in [0, 255])."""
    return model(preprocessing.normalize_image(tf.constant(pixels)), training=False).numpy()


def export_and_compare(model: keras.Model, folder: Path, export_format: str) -> float:
    """Exports `model` at its own size without crop and returns max |file - Keras| on
    fresh images, read back through a new runtime session."""
    size = model.input_shape[1]
    path = folder / f"model{portable.SUFFIXES[export_format]}"
    result = portable.export_portable(model, path, export_format, eval_transform=EvalTransform(size, 0))
    assert result.max_abs_difference <= portable.FLOAT_TOLERANCE
    contract = json.loads(portable.contract_path_for(path).read_text("utf-8"))
    assert contract["input"]["shape"] == [None, size, size, 3] and contract["format"] == export_format
    pixels = portable.sample_images(size, count=3, seed=7)
    actual = portable.Runtime(str(path), export_format).run(pixels)
    return float(np.max(np.abs(actual - keras_outputs(model, pixels))))


@pytest.mark.parametrize("export_format", portable.FORMATS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_lambda_layer_file_matches_keras(implementation, export_format, tmp_path):
    model = lambda_layer_model(implementation)
    assert export_and_compare(model, tmp_path, export_format) <= portable.FLOAT_TOLERANCE
    assert not kernel_support.builtin_ops_only_active()


@pytest.mark.slow
@pytest.mark.parametrize("export_format", portable.FORMATS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_file_matches_keras(name, export_format, tmp_path):
    assert export_and_compare(MODELS[name](), tmp_path, export_format) <= portable.FLOAT_TOLERANCE


def test_builtin_ops_only_selects_the_folded_convolution():
    from lambda_keras.layers import lambda_layer  # pylint: disable=import-outside-toplevel

    host_platform = lambda_layer._auto_platform()  # pylint: disable=protected-access
    with kernel_support.builtin_ops_only():
        with kernel_support.builtin_ops_only():
            assert lambda_layer._convolution_form() == "folded"  # pylint: disable=protected-access
        assert kernel_support.builtin_ops_only_active()
        assert lambda_layer._auto_platform() == host_platform  # pylint: disable=protected-access
    assert not kernel_support.builtin_ops_only_active()


def digits_classifier() -> tuple[keras.Model, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A conv + stem pool + lambda layer classifier trained for a few seconds on the demo's digits at 16x16.

    Returns:
      The model (normalised [batch, 16, 16, 3] -> softmax [batch, 10]) and the train
      and validation pixels ([n, 16, 16, 3] float32 in [0, 255]) and digits, split as
      `training.demo_data` splits them.
    """
    from training import demo_data  # pylint: disable=import-outside-toplevel

    images, digits = demo_data.digit_images(16)
    order = np.random.default_rng(0).permutation(len(digits))
    train, validation = order[:-demo_data.VALIDATION_SIZE], order[-demo_data.VALIDATION_SIZE:]
    pixels = images.astype(np.float32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    # The -inf padded stem pool of timm's layouts: its int8 form must load under XNNPACK.
    x = SymmetricMaxPooling2D(3, strides=2, padding=1)(x)
    x = LambdaLayer(32, key_dim=8, num_heads=4, scope_size=5)(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    # Validation top-1 over seeds 0-3 (0-4), oneDNN off and on, on an AVX2 CPU: 77-96% with
    # a constant learning rate of 1e-2, 92-95% with it decayed to zero.
    epochs, batch_size = 8, 32
    learning_rate = keras.optimizers.schedules.CosineDecay(1e-2, epochs * -(-len(train) // batch_size))
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    normalised = preprocessing.normalize_image(tf.constant(pixels[train])).numpy()
    model.fit(normalised, digits[train], batch_size=batch_size, epochs=epochs, verbose=0)
    return model, pixels[train], digits[train], pixels[validation], digits[validation]


@pytest.mark.slow
def test_int8_top1_within_one_point_of_float(tmp_path):
    model, train_pixels, _, validation_pixels, validation_digits = digits_classifier()
    float_top1 = np.mean(keras_outputs(model, validation_pixels).argmax(axis=1) == validation_digits)
    path = tmp_path / "digits_int8.tflite"
    portable.export_portable(model, path, "litert", "int8", calibration_images=train_pixels[:100],
                             eval_transform=EvalTransform(16, 0))
    int8_top1 = portable.top1(portable.Runtime(str(path), "litert").run, validation_pixels, validation_digits)
    assert float_top1 > 0.85
    assert abs(int8_top1 - float_top1) <= 0.01


REFUSALS = {
    # case: (arguments after --model, what the one line names)
    "missing runtime": (["--format", "onnx", "--output", "{tmp}/m.onnx"], "onnxruntime"),
    "unwritable path": (["--format", "litert", "--output", "{tmp}/a_file/m.tflite"], "is not a folder"),
    "existing file": (["--format", "onnx", "--output", "{tmp}/taken.onnx"], "never overwritten"),
    "wrong suffix": (["--format", "litert", "--output", "{tmp}/m.onnx"], "must end in .tflite"),
    "int8 without data": (["--format", "litert", "--output", "{tmp}/m.tflite", "--quantize", "int8"],
                          "need --data_dir"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_export_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "taken.onnx").write_bytes(b"")
    if case == "missing runtime":
        find_spec = portable.importlib.util.find_spec
        monkeypatch.setattr(portable.importlib.util, "find_spec",
                            lambda name: None if name == "onnxruntime" else find_spec(name))
    argv, named = REFUSALS[case]
    before = sorted(path.name for path in tmp_path.iterdir())
    argv = [argument.format(tmp=tmp_path) for argument in argv]
    assert portable.main(["--model", str(tmp_path / "no_model.keras"), *argv]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and named in stderr, stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_a_failed_check_leaves_nothing(tmp_path, monkeypatch):
    model = lambda_layer_model("einsum")
    monkeypatch.setattr(portable, "FLOAT_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="differs from Keras"):
        portable.export_portable(model, tmp_path / "m.tflite", "litert", eval_transform=EvalTransform(LAYER_SIZE, 0))
    assert list(tmp_path.iterdir()) == []


def test_the_check_compares_probabilities_as_logits():
    """Near-uniform probabilities (an untrained 1000-class model's) hide a logit error
    of 1e-3 from a plain difference; their logarithms show it."""
    logits = np.random.default_rng(0).normal(0, 0.01, (4, 1000))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits)).astype(np.float32)
    moved = logits.copy()
    moved[:, 0] += 1e-3
    actual = keras.ops.convert_to_numpy(keras.ops.softmax(moved)).astype(np.float32)
    assert np.max(np.abs(actual - expected)) < portable.FLOAT_TOLERANCE
    assert portable.output_difference(actual, expected, probabilities=True) > portable.FLOAT_TOLERANCE
    assert portable.output_difference(expected, expected, probabilities=True) == 0.0
    assert portable.output_difference(logits + 1e-3, logits, probabilities=False) == pytest.approx(1e-3)
