"""timm's lambda ResNets: converted weights give timm's logits; bad checkpoints are refused.

The peer venv's timm (tests/peers.py) builds each model with random weights and BN
statistics (tests/timm_reference_worker.py), saves ``model.safetensors`` and its
eval-mode logits for two 256x256 images; here the checkpoint goes through
``python -m lambda_keras.convert_timm`` and the constructor's ``weights=`` and the
logits are compared. Timings on 2 cores: the worker ~25 s for the three models, each
conversion and comparison 4-8 s.
"""

import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from lambda_keras import convert_timm, imagenet_utils
from lambda_keras.data import preprocessing
from lambda_keras.models import CONSTRUCTORS
from lambda_keras.models.variants import PRETRAINED, TIMM_VARIANTS
from peers import peer_python

ATOL = 1e-4
TIMM_WORKER = Path(__file__).with_name("timm_reference_worker.py")
MODELS = ("lambda_resnet26t", "lambda_resnet26rpt_256", "lambda_resnet50ts")


@pytest.fixture(scope="module")
def timm_models(tmp_path_factory) -> Path:
    """A folder with ``<model>/model.safetensors`` and ``<model>/logits.npz`` per timm model."""
    folder = tmp_path_factory.mktemp("timm_models")
    subprocess.run(
        [peer_python(), str(TIMM_WORKER), "models", str(folder), *MODELS], check=True, capture_output=True,
        timeout=600,
    )
    return folder


def _convert(checkpoint: Path, model: str, output: Path, capsys) -> tuple[int, str]:
    status = convert_timm.main([str(checkpoint), "--model", model, "--output", str(output)])
    return status, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_converted_weights_give_timm_logits(model, timm_models, tmp_path, capsys):
    output = tmp_path / f"{model}.weights.h5"
    status, error = _convert(timm_models / model / "model.safetensors", model, output, capsys)
    assert status == 0, error
    reference = np.load(timm_models / model / "logits.npz")
    keras_model = CONSTRUCTORS[TIMM_VARIANTS[model].name](weights=str(output), classifier_activation=None)
    logits = np.asarray(keras_model(reference["images"].transpose(0, 2, 3, 1), training=False))
    # The logits vary (random weights that all count), so a mapping error cannot hide under the tolerance.
    assert reference["logits"].std() > 0.1
    np.testing.assert_allclose(logits, reference["logits"], atol=ATOL, rtol=0)


def test_truncated_checkpoint_is_refused_naming_the_cut_tensor(timm_models, tmp_path, capsys):
    checkpoint = tmp_path / "model.safetensors"
    whole = (timm_models / "lambda_resnet26t" / "model.safetensors").read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    output = tmp_path / "out.weights.h5"
    status, error = _convert(checkpoint, "lambda_resnet26t", output, capsys)
    assert status == 2
    assert len(error.strip().splitlines()) == 1
    assert "truncated" in error and "tensor 'stages." in error
    assert not output.exists() and os.listdir(tmp_path) == ["model.safetensors"]


def test_checkpoint_of_another_architecture_is_refused(timm_models, tmp_path, capsys):
    output = tmp_path / "out.weights.h5"
    output.write_bytes(b"earlier weights")
    status, error = _convert(timm_models / "lambda_resnet26t" / "model.safetensors", "lambda_resnet50ts", output,
                             capsys)
    assert status == 2
    # lambda_resnet50ts has three c2 blocks, lambda_resnet26t two.
    assert error.strip() == (
        "python -m lambda_keras.convert_timm: error: The checkpoint lacks tensor "
        "'stages.0.2.conv1_1x1.conv.weight', which lambda_resnet50ts needs: is it a lambda_resnet50ts checkpoint?"
    )
    assert output.read_bytes() == b"earlier weights" and os.listdir(tmp_path) == ["out.weights.h5"]


def test_cli_refuses_an_output_keras_cannot_load(tmp_path, capsys):
    status, error = _convert(tmp_path / "model.safetensors", "lambda_resnet26t", tmp_path / "weights.h5", capsys)
    assert status == 2
    output = tmp_path / "weights.h5"
    assert error == (f"python -m lambda_keras.convert_timm: error: --output must end in .weights.h5 "
                     f"(what Keras loads), not '{output}'.\n")


@pytest.mark.parametrize("model", MODELS)
def test_imagenet_weights_say_how_to_get_them(model):
    variant = TIMM_VARIANTS[model]
    with pytest.raises(ValueError) as raised:
        CONSTRUCTORS[variant.name](weights="imagenet")
    message = str(raised.value)
    assert "pip install huggingface_hub" in message
    assert f"hf download {PRETRAINED[variant.name].pretrained} model.safetensors --local-dir {model}" in message
    assert (f"python -m lambda_keras.convert_timm {model}/model.safetensors --model {model} "
            f"--output {model}.weights.h5") in message


def _photo_like_image() -> np.ndarray:
    """A 333x500 uint8 RGB image: smooth colour fields, a sharp-edged patch and noise."""
    rows, columns = np.mgrid[0:333, 0:500] / 50.0
    image = np.stack([128 + 90 * np.sin(columns + 0.3 * c) * np.cos(0.7 * rows - c) for c in range(3)], axis=-1)
    image[100:200, 150:320] = (200, 40, 60)
    image += np.random.default_rng(0).normal(0, 12, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_eval_transform_matches_timm(tmp_path):
    """Our resize and crop of each model equal timm's eval transform (PIL bicubic) to one
    level in 255 per pixel; 0.2 levels on average (docs/design.md, "timm's weights")."""
    image = _photo_like_image()
    np.save(tmp_path / "image.npy", image)
    subprocess.run(
        [peer_python(), str(TIMM_WORKER), "transform", str(tmp_path / "image.npy"), str(tmp_path / "timm.npz"),
         *MODELS], check=True, capture_output=True, timeout=600,
    )
    timm_inputs = np.load(tmp_path / "timm.npz")
    level = 1.0 / np.array(preprocessing.STDDEV_RGB)  # one level of [0, 255] after normalisation
    for model in MODELS:
        ours = imagenet_utils.preprocess_image(image, model)
        difference = np.abs(ours - timm_inputs[model].transpose(1, 2, 0)) / level
        assert difference.max() <= 1.0 + 1e-3, model
        assert difference.mean() <= 0.25, model


@pytest.mark.slow
def test_export_serves_with_the_timm_transform(tmp_path):
    """A model named like timm's is exported with its weights' eval transform."""
    from export import saved_model

    classifier = keras.Sequential(
        [keras.Input((256, 256, 3)), keras.layers.Conv2D(4, 8, strides=8), keras.layers.Flatten(),
         keras.layers.Dense(10, activation="softmax")],
        name="lambda_resnet50ts",
    )
    path = saved_model.export_model(classifier, tmp_path / "lambda_resnet50ts", warmup=False)
    image = _photo_like_image()
    served = tf.saved_model.load(str(path)).signatures["serve_images"](images=tf.constant(image[None]))
    expected = classifier(imagenet_utils.preprocess_image(image, "lambda_resnet50ts")[None])
    np.testing.assert_allclose(served["probabilities"].numpy(), np.asarray(expected), atol=1e-6)
    # ... which the paper recipe's transform would not give.
    recipe = classifier(preprocessing.preprocess_decoded_for_eval(image, 256)[None])
    assert np.abs(np.asarray(recipe) - np.asarray(expected)).max() > 1e-3


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_checkpoint_with_a_non_finite_tensor_is_refused_naming_it(tmp_path, capsys, bad_value):
    from safetensors.numpy import save_file

    tensors = {"stem.conv1.conv.weight": np.ones((24, 3, 3, 3), np.float32),
               "stem.conv1.bn.running_var": np.ones((24,), np.float32)}
    tensors["stem.conv1.bn.running_var"][5] = bad_value
    checkpoint = tmp_path / "model.safetensors"
    save_file(tensors, str(checkpoint))
    status, error = _convert(checkpoint, "lambda_resnet26t", tmp_path / "out.weights.h5", capsys)
    assert status == 2 and len(error.strip().splitlines()) == 1
    assert "'stem.conv1.bn.running_var'" in error and "NaN or infinite" in error
    assert not (tmp_path / "out.weights.h5").exists()
