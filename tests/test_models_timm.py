"""timm's lambda ResNets: converted weights give timm's logits; bad checkpoints are refused.

timm's side comes from golden fixtures (tests/fixtures/timm/, written on demand by
tests/fixtures/make_timm_fixtures.py under the peer venv of requirements-peers.txt):
each model's state dict regenerates here with NumPy from the recorded seed and layout
(tests/timm_fixtures.py), is written as ``model.safetensors`` and goes through
``python -m lambda_keras.convert_timm`` and the constructor's ``weights=``; the logits
for the fixture's two 256x256 images are compared with timm's recorded ones. Neither
torch nor timm is needed. Timings on 2 cores: each regeneration under 1 s, each
conversion and comparison 4-8 s.
"""

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

import timm_fixtures
from lambda_keras import convert_timm, imagenet_utils
from lambda_keras.data import preprocessing
from lambda_keras.models import CONSTRUCTORS
from lambda_keras.models.variants import PRETRAINED, TIMM_VARIANTS

ATOL = 1e-4
MODELS = ("lambda_resnet26t", "lambda_resnet26rpt_256", "lambda_resnet50ts")


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """``timm_checkpoint(model)``: the path of ``model.safetensors`` regenerated from the model's fixture."""
    folder = tmp_path_factory.mktemp("timm_checkpoints")

    def checkpoint(model: str) -> Path:
        path = folder / model / "model.safetensors"
        if not path.exists():
            path.parent.mkdir()
            save_file(timm_fixtures.state_dict(timm_fixtures.load(model)), str(path))
        return path

    return checkpoint


def _convert(checkpoint: Path, model: str, output: Path, capsys) -> tuple[int, str]:
    status = convert_timm.main([str(checkpoint), "--model", model, "--output", str(output)])
    return status, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_converted_weights_give_timm_logits(model, timm_checkpoint, tmp_path, capsys):
    fixture = timm_fixtures.load(model)
    output = tmp_path / f"{model}.weights.h5"
    status, error = _convert(timm_checkpoint(model), model, output, capsys)
    assert status == 0, error
    images = timm_fixtures.draw_inputs(fixture["inputs"])  # NCHW, as timm took them
    expected = timm_fixtures.outputs(fixture)
    keras_model = CONSTRUCTORS[TIMM_VARIANTS[model].name](weights=str(output), classifier_activation=None)
    logits = np.asarray(keras_model(images.transpose(0, 2, 3, 1), training=False))
    # The logits vary (random weights that all count), so a mapping error cannot hide under the tolerance.
    assert expected.std() > 0.1
    np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)


def test_truncated_checkpoint_is_refused_naming_the_cut_tensor(timm_checkpoint, tmp_path, capsys):
    checkpoint = tmp_path / "model.safetensors"
    whole = timm_checkpoint("lambda_resnet26t").read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    output = tmp_path / "out.weights.h5"
    status, error = _convert(checkpoint, "lambda_resnet26t", output, capsys)
    assert status == 2
    assert len(error.strip().splitlines()) == 1
    assert "truncated" in error and "tensor 'stages." in error
    assert not output.exists() and os.listdir(tmp_path) == ["model.safetensors"]


def test_checkpoint_of_another_architecture_is_refused(timm_checkpoint, tmp_path, capsys):
    output = tmp_path / "out.weights.h5"
    output.write_bytes(b"earlier weights")
    status, error = _convert(timm_checkpoint("lambda_resnet26t"), "lambda_resnet50ts", output, capsys)
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


def test_eval_transform_matches_timm():
    """Our resize and crop of each model equal timm's eval transform (PIL bicubic) to one
    level in 255 per pixel; 0.2 levels on average (docs/design.md, "timm's weights").
    timm's output is a fixture: whole levels of [0, 255] (tests/fixtures/timm/transform_*.npz)."""
    recorded = json.loads((timm_fixtures.FIXTURES / "transform.json").read_text())
    image = timm_fixtures.photo_like_image()
    assert hashlib.sha256(image.tobytes()).hexdigest() == recorded["image"]["sha256"], (
        f"the test image regenerates differently here; regenerate the fixtures: {timm_fixtures.REGENERATE}")
    for model in MODELS:
        config = recorded["models"][model]
        # The fixture is of the transform that our variant table names.
        assert (config["crop_pct"], config["input_size"][1:]) == (
            PRETRAINED[TIMM_VARIANTS[model].name].crop_pct, [256, 256]), model
        ours = imagenet_utils.preprocess_image(image, model) * np.array(preprocessing.STDDEV_RGB) + np.array(
            preprocessing.MEAN_RGB)
        difference = np.abs(ours - np.load(timm_fixtures.FIXTURES / config["levels"])["levels"])
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
    image = timm_fixtures.photo_like_image()
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
