"""LambdaMobileNetV2 (Appendix D.3.2, Table 17): its counts, its numbers, its arguments.

The conv part is checked against keras.applications.MobileNetV2 with the same weights,
the two lightweight lambda blocks against a NumPy restatement of the block (the lambda
layer from ``lambda_reference``), both at 64x64 and ``alpha=0.35`` to stay fast.
"""

import math

import keras
import numpy as np
import pytest

import lambda_reference
from lambda_keras.layers import kernel_support
from lambda_keras.models import LambdaMobileNetV2, ModelConfig, ModelConfigError, build_model, multiply_adds
from lambda_keras.models.variants import KERAS_MOBILENET_V2_PARAMETERS, MOBILENET_V2_PARAMETERS
from random_weights import randomize
from training import config as config_lib

structural = pytest.mark.structural
SIZE, ALPHA = 64, 0.35


def trainable_parameters(model: keras.Model) -> int:
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)


def lambda_block_parameters(d: int, k: int = 32, h: int = 4, r: int = 5) -> int:
    """The lightweight lambda block at width d, no expansion: the lambda layer (Q, K and
    V projections, BN on Q and V, an r x r x k embedding table), its BN, the d -> d
    projection and its BN."""
    lambda_layer = d * (h * k + k + d // h) + 2 * h * k + 2 * (d // h) + r * r * k
    return lambda_layer + 2 * d + d * d + 2 * d


def inverted_bottleneck_parameters(d: int, t: int = 6) -> int:
    """keras.applications' inverted bottleneck d -> d: expand, depthwise 3x3, project, with BNs."""
    return d * t * d + 2 * t * d + 9 * t * d + 2 * t * d + t * d * d + 2 * d


@structural
def test_parameters_are_table_17s():
    with keras.StatelessScope(initialize_variables=False):  # shapes only, no initial values
        ours = trainable_parameters(LambdaMobileNetV2())
        plain = trainable_parameters(keras.applications.MobileNetV2(weights=None))
    assert plain == KERAS_MOBILENET_V2_PARAMETERS == 3_504_872 and f"{plain / 1e6:.2f}" == "3.50"
    # The 10th and 16th bottlenecks (64 and 160 channels) become lightweight lambda blocks.
    replaced = sum(inverted_bottleneck_parameters(d) - lambda_block_parameters(d) for d in (64, 160))
    assert ours == plain - replaced == MOBILENET_V2_PARAMETERS == 3_206_680
    assert abs(ours - 3.21e6) <= 0.05e6 and f"{ours / 1e6:.2f}" == "3.21"


def _images(channels_first: bool = False) -> np.ndarray:
    images = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    return images.transpose(0, 3, 1, 2) if channels_first else images


def _output(model: keras.Model, layer: str, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer(layer).output)(x, training=False))


def _norm(layer) -> tuple:
    return tuple(keras.ops.convert_to_numpy(w).astype(np.float64)
                 for w in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance))


def reference_lambda_block(model: keras.Model, block_id: int, x: np.ndarray) -> np.ndarray:
    """The lightweight lambda block in NumPy, inference mode: lambda layer -> BN ->
    ReLU6 -> 1x1 projection -> BN -> + input."""
    prefix = f"block_{block_id}_"
    layer = model.get_layer(f"{prefix}lambda")
    weights = {name: keras.ops.convert_to_numpy(getattr(layer, name)).astype(np.float64)
               for name in ("query_kernel", "key_kernel", "value_kernel", "position_embeddings")}
    weights["query_norm"], weights["value_norm"] = _norm(layer.query_norm), _norm(layer.value_norm)
    y = lambda_reference.lambda_layer(x, weights, key_dim=32, num_heads=4, intra_depth=1, epsilon=1e-3)
    y = np.clip(lambda_reference.batch_norm(y, *_norm(model.get_layer(f"{prefix}lambda_BN")), 1e-3), 0, 6)
    y = y @ keras.ops.convert_to_numpy(model.get_layer(f"{prefix}project").kernel)[0, 0]
    return x + lambda_reference.batch_norm(y, *_norm(model.get_layer(f"{prefix}project_BN")), 1e-3)


def test_conv_part_is_keras_mobilenet_v2_and_lambda_blocks_the_papers():
    ours = LambdaMobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=ALPHA, classes=10, classifier_activation=None)
    plain = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=ALPHA, weights=None, classes=10,
                                           classifier_activation=None)
    randomize(ours, seed=0)
    randomize(plain, seed=1)
    not_copied = set()
    for layer in (layer for layer in plain.layers if layer.weights):
        mine = {layer.name: layer for layer in ours.layers}.get(layer.name)
        if mine is not None and [w.shape for w in mine.weights] == [w.shape for w in layer.weights]:
            mine.set_weights(layer.get_weights())
        else:
            not_copied.add(layer.name)
    # Every weighted layer but the replaced blocks' expansion, depthwise conv and projection.
    assert not_copied == {f"block_{block_id}_{name}" for block_id in (9, 15)
                          for name in ("expand", "expand_BN", "depthwise", "depthwise_BN", "project")}
    x = _images()
    np.testing.assert_allclose(_output(ours, "block_8_add", x), _output(plain, "block_8_add", x),
                               rtol=1e-4, atol=1e-4)
    for block_id in (9, 15):
        block_input = _output(ours, f"block_{block_id - 1}_add", x).astype(np.float64)
        expected = reference_lambda_block(ours, block_id, block_input)
        np.testing.assert_allclose(_output(ours, f"block_{block_id}_add", x), expected, rtol=1e-5, atol=1e-5)
    # After the lambda blocks the network is keras': its last block and head on our block_15 output.
    tail = keras.Input(ours.get_layer("block_15_add").output.shape[1:])
    y = tail
    for layer in plain.layers[plain.layers.index(plain.get_layer("block_16_expand")):]:
        y = layer(y)
    expected = keras.Model(tail, y)(_output(ours, "block_15_add", x), training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x, training=False)),
                               keras.ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow" and not kernel_support.has_dilated_transposed_convolution(),
    reason="TensorFlow's CPU convolutions without oneDNN take NHWC only (keras.applications models fail alike)",
)
def test_channels_first_gives_the_channels_last_numbers():
    last = LambdaMobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=ALPHA, classes=10, classifier_activation=None)
    randomize(last)
    expected = keras.ops.convert_to_numpy(last(_images(), training=False))
    keras.config.set_image_data_format("channels_first")
    try:
        first = LambdaMobileNetV2(input_shape=(3, SIZE, SIZE), alpha=ALPHA, classes=10, classifier_activation=None)
        first.set_weights(last.get_weights())
        outputs = keras.ops.convert_to_numpy(first(_images(channels_first=True), training=False))
        assert LambdaMobileNetV2(include_top=False, alpha=ALPHA).input_shape == (None, 3, None, None)
        assert multiply_adds(first) == multiply_adds(last)
    finally:
        keras.config.set_image_data_format("channels_last")
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)


def test_features_and_pooling():
    features = LambdaMobileNetV2(include_top=False, alpha=ALPHA)
    assert features.input_shape == (None, None, None, 3) and features.output_shape == (None, None, None, 1280)
    randomize(features)
    x = _images()
    maps = keras.ops.convert_to_numpy(features(x, training=False))
    assert maps.shape == (2, SIZE // 32, SIZE // 32, 1280)
    pooled = {}
    for pooling in ("avg", "max"):
        model = LambdaMobileNetV2(include_top=False, pooling=pooling, alpha=ALPHA)
        model.set_weights(features.get_weights())
        pooled[pooling] = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(pooled["avg"], maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled["max"], maps.max(axis=(1, 2)), rtol=1e-5, atol=1e-5)


@structural
def test_defaults_follow_keras_applications():
    with keras.StatelessScope(initialize_variables=False):
        model = LambdaMobileNetV2()
        wide = LambdaMobileNetV2(alpha=1.4, include_top=False)
        tensor = keras.Input((96, 96, 3))
        on_tensor = LambdaMobileNetV2(input_tensor=tensor, include_top=False, pooling="avg", alpha=ALPHA)
    assert model.name == "lambda_mobilenetv2_1.00_224" and model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)
    assert wide.output_shape == (None, None, None, 1792)  # 1280 x 1.4, as keras.applications
    assert on_tensor.inputs[0] is tensor and on_tensor.output_shape == (None, 1280)
    lambda_layer = model.get_layer("block_15_lambda")
    assert (lambda_layer.key_dim, lambda_layer.num_heads, lambda_layer.scope_size) == (32, 4, 5)
    assert [layer.name for layer in model.layers if layer.name.endswith("_lambda")] == [
        "block_9_lambda", "block_15_lambda"]
    assert "block_9_expand" not in {layer.name for layer in model.layers}


@structural
@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"alpha": 0}, "`alpha` must be a positive number"),
        ({"alpha": "1.0"}, "`alpha` must be a positive number"),
        ({"weights": "imagenet"}, "No ImageNet weights are published"),
        ({"weights": "missing.weights.h5"}, "The `weights` argument should be either"),
        ({"classes": 0}, "`classes` should be a positive integer"),
        ({"input_shape": (16, 16, 3)}, "Input size must be at least 32x32"),
        ({"include_top": False, "pooling": "mean"}, '`pooling` should be None, "avg" or "max"'),
        ({"input_shape": (None, None, 3)}, "you should specify a static `input_shape`"),
        ({"dropout_rate": 1.0}, "`dropout_rate` must be in"),
        ({"stochastic_depth_rate": 0.1}, "`stochastic_depth_rate` applies only to the ResNets"),
        ({"num_heads": 3, "input_shape": (32, 32, 3)}, "`filters` must be divisible by `num_heads`"),
    ],
)
def test_invalid_arguments_raise_one_line_value_errors(arguments, message):
    with keras.StatelessScope(initialize_variables=False), pytest.raises(ValueError, match=message) as raised:
        LambdaMobileNetV2(**arguments)
    assert "\n" not in str(raised.value)


@structural
def test_model_config_names_it():
    config = ModelConfig.from_dict({"architecture": "LambdaMobileNetV2", "alpha": 0.5, "dropout_rate": 0.2})
    assert (config.alpha, config.lambda_layer.key_dim, config.lambda_layer.scope_size) == (0.5, 32, 5)
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = build_model(config, input_shape=(32, 32, 3), classes=10)
    assert model.name == "lambda_mobilenetv2_0.50_32" and model.get_layer("top_dropout").rate == 0.2
    for values, key in [
        ({"architecture": "LambdaResNet50", "alpha": 0.5}, "alpha"),
        ({"architecture": "LambdaMobileNetV2", "se_ratio": 0.25}, "se_ratio"),
        ({"architecture": "LambdaMobileNetV2", "activation": "silu"}, "activation"),
        ({"architecture": "LambdaMobileNetV2", "blocks_per_stage": [1, 1, 1, 1]}, "blocks_per_stage"),
        ({"architecture": "LambdaMobileNetV2", "alpha": -1}, "alpha"),
    ]:
        with pytest.raises(ModelConfigError) as raised:
            ModelConfig.from_dict(values)
        assert raised.value.key == key


@structural
def test_a_recipe_trains_it_with_set():
    nulls = ["model.blocks_per_stage=null", "model.lambda_blocks=null", "model.width_multiplier=null",
             "model.lambda_layer=null"]
    config = config_lib.load_config("demo", ["model.architecture=LambdaMobileNetV2", *nulls, "model.alpha=0.5"],
                                    model_dir="/tmp/unused")
    assert config.model == ModelConfig("LambdaMobileNetV2", alpha=0.5)
    # The demo's ResNet layout is named as the key at fault.
    with pytest.raises(config_lib.ConfigError, match="`blocks_per_stage` applies only to LambdaResNet"):
        config_lib.load_config("demo", ["model.architecture=LambdaMobileNetV2"], model_dir="/tmp/unused")
