"""KerasHub's own model-test harness on lambda_keras.hub's backbone and classifier.

``keras_hub.src.tests.test_case.TestCase`` (it ships in the keras-hub wheel) is what every
KerasHub model's tests call; the calls here are those of KerasHub's ResNet, VGG, backbone
and task tests (``models/resnet/resnet_backbone_test.py``,
``resnet_image_classifier_test.py``, ``models/vgg/*_test.py``, ``models/backbone_test.py``,
``models/task_test.py``), made on a tiny LambdaResNet (the generic factory, one block per
stage at a quarter of the stage widths, lambda layers in c4 and c5) and small images.
``run_vision_backbone_test`` covers serialization, eager and compiled predict, tf.data,
the name convention, pyramid outputs, mixed precision, int8/float8 quantization and,
where the backend convolves channels-first (not TensorFlow on CPU), the channels-first
model. Presets are saved by the tests themselves: nothing is downloaded.

Runs under TensorFlow (the main run), JAX (tests/test_platforms.py adds this file to
its JAX run) and PyTorch (run by hand: KerasHub's harness skips its precision and
quantization checks there on CPU).
"""

import os

import numpy as np
import pytest
from keras import ops

keras_hub = pytest.importorskip("keras_hub", reason='the hub extra: pip install "lambda-keras[hub]"')

from keras_hub.src.tests.test_case import TestCase  # noqa: E402
from keras_hub.src.utils.preset_utils import (  # noqa: E402
    CONFIG_FILE,
    METADATA_FILE,
    MODEL_WEIGHTS_FILE,
    TASK_CONFIG_FILE,
    TASK_WEIGHTS_FILE,
    check_config_class,
    load_json,
)

from lambda_keras.hub import (  # noqa: E402
    LambdaResNetBackbone,
    LambdaResNetImageClassifier,
    LambdaResNetImageClassifierPreprocessor,
    LambdaResNetImageConverter,
)

TINY_CONFIG = {
    "architecture": "LambdaResNet",
    "blocks_per_stage": [1, 1, 1, 1],
    "width_multiplier": 0.25,
    "lambda_blocks": [[], [], [1], [1]],
    "lambda_layer": {"scope_size": 7},
}


class LambdaResNetBackboneTest(TestCase):
    def setUp(self):
        self.init_kwargs = {**TINY_CONFIG, "image_shape": (None, None, 3)}
        self.input_size = 64
        self.input_data = ops.ones((2, self.input_size, self.input_size, 3))

    def test_backbone_basics(self):
        self.run_vision_backbone_test(
            cls=LambdaResNetBackbone,
            init_kwargs=self.init_kwargs,
            input_data=self.input_data,
            expected_output_shape=(2, 2, 2, 512),
            expected_pyramid_output_keys=["P2", "P3", "P4", "P5"],
            expected_pyramid_image_sizes=[(16, 16), (8, 8), (4, 4), (2, 2)],
        )

    def test_saved_model(self):
        self.run_model_saving_test(
            cls=LambdaResNetBackbone,
            init_kwargs=self.init_kwargs,
            input_data=self.input_data,
        )

    def test_save_to_preset(self):
        # models/backbone_test.py's checks, on a backbone saved here.
        save_dir = self.get_temp_dir()
        backbone = LambdaResNetBackbone(**self.init_kwargs)
        backbone.save_to_preset(save_dir)

        self.assertTrue(os.path.exists(os.path.join(save_dir, CONFIG_FILE)))
        self.assertTrue(os.path.exists(os.path.join(save_dir, MODEL_WEIGHTS_FILE)))
        self.assertTrue(os.path.exists(os.path.join(save_dir, METADATA_FILE)))
        backbone_config = load_json(save_dir, CONFIG_FILE)
        self.assertTrue("build_config" not in backbone_config)
        self.assertTrue("compile_config" not in backbone_config)
        metadata_config = load_json(save_dir, METADATA_FILE)
        self.assertTrue("keras_version" in metadata_config)
        self.assertTrue("keras_hub_version" in metadata_config)
        self.assertEqual(metadata_config["parameter_count"], backbone.count_params())
        self.assertTrue("ImageClassifier" in metadata_config["tasks"])
        self.assertEqual(LambdaResNetBackbone, check_config_class(backbone_config))

        restored_backbone = keras_hub.models.Backbone.from_preset(save_dir)
        self.assertAllClose(backbone(self.input_data), restored_backbone(self.input_data))

    def test_preset(self):
        # The local preset stands for KerasHub's `for preset in cls.presets` (none here).
        preset = os.path.join(self.get_temp_dir(), "tiny_lambda_resnet")
        LambdaResNetBackbone(**self.init_kwargs).save_to_preset(preset)
        self.run_preset_test(
            cls=LambdaResNetBackbone,
            preset=preset,
            input_data=self.input_data,
            expected_output_shape=(2, 2, 2, 512),
        )


class LambdaResNetImageClassifierTest(TestCase):
    def setUp(self):
        self.images = np.ones((2, 32, 32, 3), dtype="float32")
        self.labels = [0, 1]
        self.backbone = LambdaResNetBackbone(**TINY_CONFIG, image_shape=(32, 32, 3))
        image_converter = LambdaResNetImageConverter(image_size=(32, 32), crop_padding=0)
        self.preprocessor = LambdaResNetImageClassifierPreprocessor(image_converter=image_converter)
        self.init_kwargs = {
            "backbone": self.backbone,
            "num_classes": 2,
            "pooling": "avg",
            "activation": "softmax",
            "preprocessor": self.preprocessor,
        }
        self.train_data = (self.images, self.labels)

    def test_classifier_basics(self):
        self.run_task_test(
            cls=LambdaResNetImageClassifier,
            init_kwargs=self.init_kwargs,
            train_data=self.train_data,
            expected_output_shape=(2, 2),
        )

    def test_head_dtype(self):
        model = LambdaResNetImageClassifier(**self.init_kwargs, head_dtype="bfloat16")
        self.assertEqual(model.output_dense.compute_dtype, "bfloat16")

    def test_saved_model(self):
        self.run_model_saving_test(
            cls=LambdaResNetImageClassifier,
            init_kwargs=self.init_kwargs,
            input_data=self.images,
        )

    def test_preset(self):
        preset = os.path.join(self.get_temp_dir(), "tiny_lambda_resnet_classifier")
        LambdaResNetImageClassifier(**self.init_kwargs).save_to_preset(preset)
        # As resnet_image_classifier_test.py's test_all_presets (a new head) ...
        self.run_preset_test(
            cls=LambdaResNetImageClassifier,
            preset=preset,
            init_kwargs={"num_classes": 2},
            input_data=self.images,
            expected_output_shape=(2, 2),
        )
        # ... and its test_smallest_preset (the saved head).
        self.run_preset_test(
            cls=LambdaResNetImageClassifier,
            preset=preset,
            input_data=self.images,
            expected_output_shape=(2, 2),
        )

    def test_save_to_preset(self):
        # models/task_test.py's checks, on a classifier saved here.
        save_dir = self.get_temp_dir()
        task = LambdaResNetImageClassifier(**self.init_kwargs)
        task.save_to_preset(save_dir)

        for file in (CONFIG_FILE, MODEL_WEIGHTS_FILE, METADATA_FILE, TASK_CONFIG_FILE, TASK_WEIGHTS_FILE):
            self.assertTrue(os.path.exists(os.path.join(save_dir, file)), file)
        task_config = load_json(save_dir, TASK_CONFIG_FILE)
        self.assertTrue("build_config" not in task_config)
        self.assertTrue("compile_config" not in task_config)
        self.assertTrue("backbone" in task_config["config"])
        self.assertTrue("preprocessor" in task_config["config"])
        self.assertEqual(LambdaResNetImageClassifier, check_config_class(task_config))

        restored_task = keras_hub.models.ImageClassifier.from_preset(save_dir)
        self.assertAllClose(task.predict(self.images), restored_task.predict(self.images))

        # A new head (random weights): the backbone's outputs stay the same.
        restored_task = keras_hub.models.ImageClassifier.from_preset(save_dir, num_classes=2)
        pixels = task.preprocessor(self.images)
        self.assertAllClose(task.backbone.predict(pixels), restored_task.backbone.predict(pixels))

        restored_task = keras_hub.models.ImageClassifier.from_preset(save_dir, dtype="float16")
        self.assertEqual("float16", restored_task.backbone.dtype_policy.name)



def test_classifier_and_converter_take_images_of_any_size():
    """Beyond KerasHub's calls: any image size, eagerly, in tf.data and as a list, on every backend.

    The pixels are the export's evaluation transform; the classifier predicts on them.
    """
    import tensorflow as tf

    from lambda_keras.data import preprocessing

    converter = LambdaResNetImageConverter(image_size=(32, 32), crop_padding=4)
    model = LambdaResNetImageClassifier(
        backbone=LambdaResNetBackbone(**TINY_CONFIG, image_shape=(32, 32, 3)),
        num_classes=3,
        preprocessor=LambdaResNetImageClassifierPreprocessor(image_converter=converter),
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(40, 50, 3), (75, 33, 3), (32, 32, 3)]]
    expected = np.stack([preprocessing.preprocess_decoded_for_eval(tf.constant(i), 32, 4).numpy() for i in images])
    for image, pixels in zip(images, expected):
        np.testing.assert_allclose(ops.convert_to_numpy(converter(image[None]))[0], pixels, atol=1e-6)
    # A list of images of different sizes is one batch.
    np.testing.assert_allclose(ops.convert_to_numpy(converter(images)), expected, atol=1e-6)
    # tf.data with unknown image sizes, on any backend.
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8)
    )
    np.testing.assert_allclose(np.stack([p.numpy() for p in dataset.map(converter)]), expected, atol=1e-6)
    # The classifier on batches of two sizes, through its preprocessor (tf.data inside predict).
    logits = ops.convert_to_numpy(model(expected))
    for index in range(2):
        batch = np.stack([images[index]] * 2)
        np.testing.assert_allclose(model.predict(batch, verbose=0), logits[[index, index]], atol=1e-5)
