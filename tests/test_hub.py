"""Tests of lambda_keras.hub: the KerasHub backbone, classifier, preprocessing and presets.

A 4-block LambdaResNet (one block per stage, lambda layers in c4 and c5, a 7x7 scope:
the demo config's model) stands for every model of the family: the backbone is built by
the same builder. The detector test trains a RetinaNet on it (tests marked slow).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

keras_hub = pytest.importorskip("keras_hub", reason='the hub extra: pip install "lambda-keras[hub]"')

from random_weights import randomize  # noqa: E402

from lambda_keras.data import preprocessing  # noqa: E402
from lambda_keras.hub import (  # noqa: E402
    LambdaResNetBackbone,
    LambdaResNetImageClassifier,
    LambdaResNetImageClassifierPreprocessor,
    LambdaResNetImageConverter,
)
from lambda_keras.models import build_model  # noqa: E402

DEMO_CONFIG = {
    "architecture": "LambdaResNet",
    "blocks_per_stage": [1, 1, 1, 1],
    "lambda_blocks": [[], [], [1], [1]],
    "lambda_layer": {"scope_size": 7},
}


def demo_backbone(**kwargs):
    return LambdaResNetBackbone(**DEMO_CONFIG, **kwargs)


def test_import_lambda_keras_does_not_import_keras_hub():
    code = "import sys, lambda_keras, lambda_keras.models; print('keras_hub' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_backbone_config_round_trip_and_same_numbers_as_the_builder():
    backbone = demo_backbone()
    config = backbone.get_config()
    # JSON, as in a preset, and back: the same config and the same graph.
    restored = LambdaResNetBackbone.from_config(json.loads(json.dumps(config)))
    assert json.dumps(restored.get_config()) == json.dumps(config)
    assert restored.count_params() == backbone.count_params() == 5_288_832
    randomize(backbone, scale=0.1)
    restored.set_weights(backbone.get_weights())
    reference = build_model(DEMO_CONFIG, input_shape=(None, None, 3), include_top=False)
    reference.set_weights(backbone.get_weights())
    x = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype("float32")
    expected = reference.predict(x, verbose=0)
    np.testing.assert_array_equal(backbone.predict(x, verbose=0), expected)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)


@pytest.mark.parametrize("height, width", [(64, 64), (96, 160)])
def test_pyramid_outputs_levels_strides_and_values(height, width):
    backbone = demo_backbone()
    randomize(backbone, scale=0.1)
    assert list(backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    features = keras.Model(backbone.inputs, backbone.pyramid_outputs)
    x = np.random.default_rng(2).normal(size=(1, height, width, 3)).astype("float32")
    levels = features.predict(x, verbose=0)
    for level, channels in zip(range(2, 6), (256, 512, 1024, 2048)):
        assert levels[f"P{level}"].shape == (1, height // 2**level, width // 2**level, channels)
    # P5 is the backbone's own output, the last block of c5.
    np.testing.assert_array_equal(levels["P5"], backbone.predict(x, verbose=0))
    np.testing.assert_array_equal(
        levels["P4"], keras.Model(backbone.inputs, backbone.get_layer("c4_block1_out").output).predict(x, verbose=0)
    )


def test_backbone_rejects_an_invalid_config_naming_the_key():
    with pytest.raises(ValueError, match="placement"):
        LambdaResNetBackbone("LambdaResNet50", placement="CCLL")


@pytest.mark.parametrize("shape", [(75, 90, 3), (64, 64, 3), (101, 80, 3), (300, 200, 3)])
def test_converter_equals_the_export_preprocessing(shape):
    """The classifier's preprocessing is the evaluation transform the SavedModel serves."""
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    converter = LambdaResNetImageConverter(image_size=(64, 64), crop_padding=8)
    expected = preprocessing.preprocess_decoded_for_eval(tf.constant(image), 64, 8).numpy()
    np.testing.assert_array_equal(np.asarray(converter(image)), expected)
    np.testing.assert_array_equal(np.asarray(converter(image[None]))[0], expected)
    # In a tf.data graph with unknown image sizes, TensorFlow's own crop window.
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([image]), output_signature=tf.TensorSpec([None, None, 3], tf.uint8)
    )
    np.testing.assert_array_equal(next(iter(dataset.map(converter))).numpy(), expected)


def test_converter_defaults_are_the_imagenet_evaluation():
    converter = LambdaResNetImageConverter()
    assert (converter.image_size, converter.crop_padding) == ((224, 224), 32)
    image = np.full((256, 256, 3), 128, np.uint8)
    expected = (128 - np.array(preprocessing.MEAN_RGB)) / np.array(preprocessing.STDDEV_RGB)
    np.testing.assert_allclose(np.asarray(converter(image))[0, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="square"):
        LambdaResNetImageConverter(image_size=(224, 192))


def classifier():
    backbone = demo_backbone()
    randomize(backbone, scale=0.1)
    preprocessor = LambdaResNetImageClassifierPreprocessor(
        image_converter=LambdaResNetImageConverter(image_size=(64, 64), crop_padding=8)
    )
    return LambdaResNetImageClassifier(backbone=backbone, num_classes=5, preprocessor=preprocessor)


def test_classifier_preset_round_trip_gives_identical_predictions(tmp_path):
    model = classifier()
    images = np.random.default_rng(4).integers(0, 256, (3, 80, 70, 3), dtype=np.uint8)
    expected = model.predict(images, verbose=0)
    # The predictions are the backbone's on the export preprocessing's pixels.
    pixels = tf.stack([preprocessing.preprocess_decoded_for_eval(tf.constant(i), 64, 8) for i in images])
    np.testing.assert_allclose(expected, model(pixels), atol=1e-6)
    preset = tmp_path / "preset"
    model.save_to_preset(preset)
    assert sorted(os.listdir(tmp_path)) == ["preset"]  # the staging directory is gone

    loaded = keras_hub.models.ImageClassifier.from_preset(str(preset))
    assert type(loaded) is LambdaResNetImageClassifier
    assert type(loaded.preprocessor) is LambdaResNetImageClassifierPreprocessor
    converter = loaded.preprocessor.image_converter
    assert (type(converter), converter.image_size, converter.crop_padding) == (
        LambdaResNetImageConverter, (64, 64), 8)
    assert loaded.backbone.get_config() == model.backbone.get_config()
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)

    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    assert type(backbone) is LambdaResNetBackbone
    for saved, restored in zip(model.backbone.weights, backbone.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    assert type(keras_hub.models.ImageClassifierPreprocessor.from_preset(str(preset))) is (
        LambdaResNetImageClassifierPreprocessor)


def test_backbone_name_is_the_class_name_and_old_presets_keep_theirs(tmp_path):
    """The default name is Keras' snake case of the class (KerasHub's harness checks it);
    a preset saved with the earlier default, "lambda_resnet_backbone", loads unchanged."""
    assert demo_backbone().name.startswith("lambda_res_net_backbone")
    model = classifier()
    old_backbone = demo_backbone(name="lambda_resnet_backbone")
    old_backbone.set_weights(model.backbone.get_weights())
    old = LambdaResNetImageClassifier(backbone=old_backbone, num_classes=5, preprocessor=model.preprocessor)
    old.output_dense.set_weights(model.output_dense.get_weights())
    images = np.random.default_rng(8).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    expected = old.predict(images, verbose=0)
    old.save_to_preset(tmp_path / "old")
    loaded = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "old"))
    assert loaded.backbone.name == "lambda_resnet_backbone"
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)


def test_presets_carry_keras_hub_metadata_and_the_eval_transform(tmp_path):
    from lambda_keras.hub.lambda_resnet_presets import preset_entry

    model = classifier()
    model.save_to_preset(tmp_path / "classifier")
    metadata = json.loads((tmp_path / "classifier" / "metadata.json").read_text())
    count = model.backbone.count_params()
    # KerasHub's own fields, and those of a KerasHub preset entry.
    assert metadata["parameter_count"] == metadata["params"] == count == 5_288_832
    assert metadata["tasks"] == ["ImageClassifier"] and metadata["path"] == "lambda_resnet"
    assert metadata["description"].startswith(
        "LambdaResNet without its classifier, blocks per stage [1, 1, 1, 1], lambda blocks [[], [], [1], [1]]")
    transform = metadata["eval_transform"]
    assert (transform["image_size"], transform["crop_padding"], transform["interpolation"]) == ([64, 64], 8, "bilinear")
    np.testing.assert_array_equal(
        transform["scale"], (1 / np.array(preprocessing.STDDEV_RGB, np.float32)).tolist())
    assert preset_entry(tmp_path / "classifier", "kaggle://owner/lambda_resnet/keras/tiny/1") == {
        "metadata": {key: metadata[key] for key in ("description", "params", "path")},
        "kaggle_handle": "kaggle://owner/lambda_resnet/keras/tiny/1",
    }
    # A backbone alone: the same entry fields, no transform.
    model.backbone.save_to_preset(tmp_path / "backbone")
    backbone_metadata = json.loads((tmp_path / "backbone" / "metadata.json").read_text())
    assert {key: backbone_metadata[key] for key in ("description", "params", "path")} == (
        preset_entry(tmp_path / "classifier", "")["metadata"])
    assert "eval_transform" not in backbone_metadata


def test_save_to_preset_never_overwrites(tmp_path):
    model = classifier()
    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "notes.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="not empty"):
        model.save_to_preset(preset)
    assert os.listdir(preset) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["preset"]
    # A backbone alone is a preset too, and an empty directory may receive it.
    empty = tmp_path / "backbone"
    empty.mkdir()
    model.backbone.save_to_preset(empty)
    assert {"config.json", "model.weights.h5", "metadata.json"} <= set(os.listdir(empty))
    assert type(keras_hub.models.Backbone.from_preset(str(empty))) is LambdaResNetBackbone


def test_shapes_data_boxes_hold_their_shapes():
    from lambda_keras.hub.shapes_data import make_shapes

    images, targets = make_shapes(20, image_size=64, min_side=16, max_side=32, seed=5, class_colours=True)
    again, _ = make_shapes(20, image_size=64, min_side=16, max_side=32, seed=5, class_colours=True)
    np.testing.assert_array_equal(images, again)
    valid = targets["labels"] >= 0
    assert valid[:, 0].all() and set(np.unique(targets["labels"][valid])) <= {0, 1, 2}
    boxes = targets["boxes"][valid]
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (boxes >= 0).all() and (boxes <= 64).all() and (sides[:, 0] == sides[:, 1]).all()
    assert ((sides >= 16) & (sides <= 32)).all()
    # A square fills its box: its pixels are its class colour (red), not the dark background.
    image, box, label = next((images[i], targets["boxes"][i, 0], targets["labels"][i, 0])
                             for i in range(20) if targets["labels"][i, 0] == 0)
    x0, y0, x1, y1 = box.astype(int)
    assert image[y0:y1, x0:x1, 0].mean() > 150


def test_coco_mean_average_precision_of_known_detections():
    from lambda_keras.hub.coco_evaluation import coco_mean_average_precision
    from lambda_keras.hub.shapes_data import make_shapes

    _, truth = make_shapes(30, image_size=64, min_side=16, max_side=32, seed=6)
    valid = truth["labels"] >= 0
    perfect = {"boxes": truth["boxes"], "confidence": valid.astype("float32"), "labels": truth["labels"],
               "num_detections": valid.sum(axis=1)}
    assert coco_mean_average_precision(truth, perfect, (64, 64)) == {"mAP": 1.0, "mAP@0.5": 1.0}
    # Shifted by 2 pixels: every box still overlaps its object by IoU >= 0.5, not >= 0.95.
    shifted = dict(perfect, boxes=truth["boxes"] + 2)
    result = coco_mean_average_precision(truth, shifted, (64, 64))
    assert result["mAP@0.5"] == 1.0 and 0.2 < result["mAP"] < 0.8
    wrong_class = dict(perfect, labels=(truth["labels"] + 1) % 3)
    assert coco_mean_average_precision(truth, wrong_class, (64, 64)) == {"mAP": 0.0, "mAP@0.5": 0.0}


def retinanet(**kwargs):
    from lambda_keras.hub.lambda_resnet_retinanet import lambda_resnet_retinanet

    return lambda_resnet_retinanet(demo_backbone(image_shape=(64, 64, 3)), num_classes=3, **kwargs)


def test_retinanet_label_encoding_decodes_back_to_the_ground_truth_boxes():
    """Encode ground truth with the detector's label encoder, decode with its decoding path."""
    detector = retinanet()
    # Boxes of 12-28 px (the demo's sides) that each overlap some anchor by IoU >= 0.5.
    boxes = np.array([[[8, 9, 24, 25], [30, 28, 58, 56], [-1, -1, -1, -1]],
                      [[38, 6, 58, 26], [13, 35, 35, 57], [1, 2, 15, 16]]], np.float32)
    labels = np.array([[2, 0, -1], [1, 1, 0]], np.float32)
    images = np.zeros((2, 64, 64, 3), np.float32)
    deltas, classes = (np.asarray(t) for t in detector.label_encoder(images=images, gt_boxes=boxes, gt_classes=labels))
    assert deltas.shape == (2, 168, 4) and set(np.unique(classes)) <= {-2, -1, 0, 1, 2}
    # Perfect class logits: +10 for each positive anchor's class, -10 elsewhere.
    logits = np.where(np.arange(3) == classes[..., None], 10.0, -10.0).astype(np.float32)
    decoded = detector.decode_predictions({"bbox_regression": deltas, "cls_logits": logits}, images)
    for image in range(2):
        count = int(decoded["num_detections"][image])
        found = sorted(zip(np.asarray(decoded["labels"][image])[:count].tolist(),
                           np.asarray(decoded["boxes"][image])[:count].tolist()))
        valid = labels[image] >= 0
        expected = sorted(zip(labels[image][valid].astype(int).tolist(), boxes[image][valid].tolist()))
        assert [label for label, _ in found] == [label for label, _ in expected]
        np.testing.assert_allclose([box for _, box in found], [box for _, box in expected], atol=1e-3)


def test_retinanet_heads_start_at_the_anchors_with_the_prior_probability():
    """Box deltas start near 0 (boxes at their anchors), class probabilities near 0.01.

    KerasHub (0.29-0.32) alone starts the box deltas at -log(99) = -4.6 and the class logits
    at 0 (its prior bias sits on the box head).
    """
    detector = retinanet(prior_probability=0.01, seed=0)
    images = np.random.default_rng(7).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    outputs = detector(detector.preprocessor(images))
    deltas = np.asarray(outputs["bbox_regression"])
    probabilities = 1 / (1 + np.exp(-np.asarray(outputs["cls_logits"])))
    # N(0, 0.01^2) kernels give deltas of about 0.02 standard deviation; KerasHub alone, -4.6.
    assert np.abs(deltas).max() < 0.25, np.abs(deltas).max()
    np.testing.assert_allclose(probabilities.mean(), 0.01, rtol=0.1)
    np.testing.assert_allclose(np.asarray(detector.classification_head.prediction_layer.bias), np.log(0.01 / 0.99),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(detector.box_head.prediction_layer.bias), 0.0)


@pytest.mark.slow
def test_detection_demo_lambda_and_conv_backbones_reach_the_same_map():
    """examples/detection_demo.py's training, both backbones: mAP@0.5 >= 0.5 on held-out canvases."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "detection_demo", os.path.join(os.path.dirname(__file__), os.pardir, "examples", "detection_demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    results = {backbone: demo.run_detection_demo(backbone, steps=60, canvas_size=64, seed=0)
               for backbone in ("lambda", "conv")}
    for result in results.values():
        assert result["mAP@0.5"] >= 0.5 and result["mAP"] > 0.2, results
    assert abs(results["lambda"]["mAP@0.5"] - results["conv"]["mAP@0.5"]) <= 0.2, results
