"""Tests of the LambdaResNet factory: architecture, keras.applications contract, saving.

Small models run forward and training steps on 32x32 / 64x64 inputs; the deep
named constructors are built once each in tests/test_models_params.py.
"""

import os

import keras
import numpy as np
import pytest

from random_weights import randomize

from lambda_keras import LambdaLayer, StochasticDepth
from lambda_keras.layers import SymmetricMaxPooling2D, kernel_support
from lambda_keras.models import (
    CONSTRUCTORS,
    HybridResNet50,
    LambdaResNet,
    LambdaResNet50,
    build_model,
    complexity,
    feature_extractor,
    features,
    multiply_adds,
    validate_model_config,
    variants,
)

# The model's structure or argument checks: the same under every backend, so the JAX
# and PyTorch platform runs leave them out (tests/test_platforms.py).
structural = pytest.mark.structural

# A 4-block network (one block per stage) with lambda layers in the first, strided
# block of c3 and c5 and a conv block in c4: every code path, built in about a second.
TINY_BLOCKS = (1, 1, 1, 1)
TINY_LAMBDAS = ((), (1,), (), (1,))


def tiny(**kwargs):
    kwargs.setdefault("input_shape", (32, 32, 3))
    kwargs.setdefault("classes", 10)
    return LambdaResNet(TINY_BLOCKS, TINY_LAMBDAS, **kwargs)


def images(batch=2, size=32, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def lambda_resnet50():
    """LambdaResNet-50 at 64x64, built once: structure tests read its layers."""
    return LambdaResNet50(input_shape=(64, 64, 3), classes=10)


# --- architecture, read from the built model -------------------------------------


@structural
def test_lambda_resnet50_layer_names_and_placement(lambda_resnet50):
    lambda_layers = {layer.name: layer for layer in lambda_resnet50.layers if isinstance(layer, LambdaLayer)}
    # Table 18: c4 block 3 (1-based) and every c5 block.
    assert sorted(lambda_layers) == ["c4_block3_lambda", "c5_block1_lambda", "c5_block2_lambda", "c5_block3_lambda"]
    assert lambda_layers["c5_block1_lambda"].strides == 2  # 3x3/2 average pool after it
    assert all(lambda_layers[f"c5_block{i}_lambda"].strides == 1 for i in (2, 3))
    layer = lambda_layers["c4_block3_lambda"]
    assert (layer.key_dim, layer.num_heads, layer.intra_depth, layer.scope_size) == (16, 4, 1, 23)
    assert layer.output_filters == 256  # the c4 bottleneck width
    names = {layer.name for layer in lambda_resnet50.layers}
    assert "c4_block3_2_conv" not in names and {"c4_block2_2_conv", "c4_block4_2_conv"} <= names
    # The BN and ReLU after the replaced 3x3 conv stay (docs/design.md, "The lambda layer
    # replaces the 3x3 convolution only").
    assert {"c4_block3_2_bn", "c4_block3_2_relu"} <= names


@structural
def test_lambda_resnet50_se_resnet_d_and_initialisers(lambda_resnet50):
    model = lambda_resnet50
    se_blocks = sorted({layer.name.rsplit("_se_", 1)[0] for layer in model.layers if "_se_" in layer.name})
    assert se_blocks == [f"c2_block{i}" for i in (1, 2, 3)] + [f"c3_block{i}" for i in (1, 2, 3, 4)]
    assert model.get_layer("c2_block1_se_reduce").filters == 64  # int(256 * 0.25)
    # ResNet-D: strided 3x3 conv instead of the stem max pool, 2x2 average-pool shortcut.
    assert model.get_layer("stem_4_conv").strides == (2, 2)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    assert model.get_layer("c3_block1_0_pool").pool_size == (2, 2)
    assert model.get_layer("c3_block1_0_conv").strides == (1, 1)
    assert model.get_layer("c2_block1_0_conv").strides == (1, 1)  # c2 keeps the resolution
    # Zero-initialised last BN gamma of every bottleneck (Appendix A).
    last_bns = [layer for layer in model.layers if "_block" in layer.name and layer.name.endswith("_3_bn")]
    assert len(last_bns) == 16 and all(not np.any(layer.gamma.numpy()) for layer in last_bns)
    assert np.all(model.get_layer("c2_block1_1_bn").gamma.numpy() == 1)
    # Classifier kernel ~ N(0, 0.01^2) ([RS]).
    kernel = model.get_layer("predictions").kernel.numpy()
    assert 0.008 < kernel.std() < 0.012
    assert not any(isinstance(layer, (keras.layers.Dropout, StochasticDepth)) for layer in model.layers)


@structural
def test_hybrid_resnet50_is_vanilla():
    model = HybridResNet50(placement="CCLL", input_shape=(32, 32, 3), include_top=False)
    names = {layer.name for layer in model.layers}
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert isinstance(model.get_layer("stem_pool"), keras.layers.MaxPooling2D)
    assert model.get_layer("c3_block1_0_conv").strides == (2, 2)  # no ResNet-D pool
    assert not any("_se_" in name or name.endswith("_0_pool") for name in names)
    stages = {name.split("_")[0] for name in names if name.endswith("_lambda")}
    assert stages == {"c4", "c5"}
    assert model.name == "hybrid_resnet50_ccll"


@structural
def test_table_12_options_reach_every_lambda_layer():
    model = HybridResNet50(placement="CCCL", input_shape=(32, 32, 3), include_top=False,
                           key_normalization="l2", query_softmax=True, lambda_batch_norm=False)
    lambda_layers = [layer for layer in model.layers if isinstance(layer, LambdaLayer)]
    assert len(lambda_layers) == 3
    for layer in lambda_layers:
        assert (layer.key_normalization, layer.query_softmax, layer.use_batch_norm) == ("l2", True, False)
    # The c5 lambda layers lose their two batch norms: 2 * (h k + v) gammas and betas each.
    default = HybridResNet50(placement="CCCL", input_shape=(32, 32, 3), include_top=False)
    assert default.count_params() - model.count_params() == 3 * 4 * (4 * 16 + 512 // 4)


@structural
def test_stochastic_depth_grows_per_stage():
    model = tiny(stochastic_depth_rate=0.2, dropout_rate=0.3)
    rates = {layer.name.split("_")[0]: layer.rate for layer in model.layers if isinstance(layer, StochasticDepth)}
    # rate * s / 5 for stage c<s>, as in the ResNet-RS code (docs/design.md, "The LambdaResNet base is ResNet-RS").
    assert rates == pytest.approx({"c2": 0.08, "c3": 0.12, "c4": 0.16, "c5": 0.2})
    assert model.get_layer("top_dropout").rate == 0.3
    # Dropout sits right before the classifier.
    assert model.layers[-2].name == "top_dropout"


def test_stochastic_depth_layer():
    layer = StochasticDepth(0.5, seed=3)
    x = np.ones((400, 2, 2, 1), "float32")
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_example = y[:, 0, 0, 0]
    assert set(np.unique(per_example)) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-rate)
    assert np.all(y == per_example[:, None, None, None])  # one draw per example
    assert 0.4 < per_example.mean() / 2 < 0.6
    with pytest.raises(ValueError, match="rate"):
        StochasticDepth(1.0)


# --- forward pass and training -------------------------------------------------

NOT_JAX = keras.backend.backend() != "jax"


@pytest.mark.parametrize(
    "build, size, run_eagerly",
    [
        # Eager under TensorFlow, where tracing a 200-layer train step costs more than
        # running it; compiled under JAX, which runs one op at a time slower still.
        pytest.param(lambda: LambdaResNet50(input_shape=(64, 64, 3), classes=10, dropout_rate=0.2,
                                            stochastic_depth_rate=0.2), 64, NOT_JAX, id="LambdaResNet50",
                     marks=pytest.mark.slow),
        pytest.param(lambda: HybridResNet50(placement="LLLL", input_shape=(64, 64, 3), classes=10),
                     64, NOT_JAX, id="HybridResNet50-LLLL", marks=pytest.mark.slow),
        # Graph mode (tf.function), with stochastic depth and dropout in the graph.
        pytest.param(lambda: tiny(stochastic_depth_rate=0.2, dropout_rate=0.2), 32, False, id="tiny-graph"),
    ],
)
def test_forward_and_train_step(build, size, run_eagerly):
    model = build()
    x = images(size=size)
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Zero-initialised last BN gammas block the gradients of everything before
    # them in each branch at initialisation; with random weights every trainable
    # weight gets a gradient.
    # Six examples: stochastic depth then keeps every branch for at least one of them
    # whatever the backend's random stream (all six dropped: below 1e-4).
    randomize(model)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy",
                  run_eagerly=run_eagerly)
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(images(batch=6, size=size, seed=2), np.array([1, 7, 0, 3, 9, 4]))
    assert np.isfinite(loss)
    unchanged = [w.path for b, w in zip(before, model.trainable_weights) if np.array_equal(b, w.numpy())]
    assert not unchanged


# --- keras.applications contract -------------------------------------------------


@pytest.mark.parametrize("pooling, shape", [(None, (2, 2, 2, 2048)), ("avg", (2, 2048)), ("max", (2, 2048))])
def test_include_top_false_pooling(pooling, shape):
    model = tiny(include_top=False, pooling=pooling, input_shape=None)
    assert model.input_shape == (None, None, None, 3)
    assert model.output_shape == ((None, None, None, 2048) if pooling is None else (None, 2048))
    assert keras.ops.convert_to_numpy(model(images(size=64))).shape == shape


@structural
def test_default_input_shape_and_custom_classes():
    model = tiny(input_shape=None, classes=7, classifier_activation=None)
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 7)
    assert model.get_layer("predictions").activation is keras.activations.linear


def test_input_tensor():
    raw = keras.Input((48, 48, 3), name="raw")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(raw)
    model = tiny(input_tensor=scaled, input_shape=None, include_top=False, pooling="avg")
    assert model.inputs[0] is raw  # the model starts at the tensor's source input
    assert model.get_layer("scale") is not None
    assert keras.ops.convert_to_numpy(model({"raw": images(size=48) * 127.5 + 127.5})).shape == (2, 2048)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": "imagenet"}, "No ImageNet weights are published"),
        ({"weights": "/no/such/file.weights.h5"}, "`weights` argument should be either `None`"),
        ({"weights": 3}, "`weights` argument should be either `None`"),
        ({"classes": 0}, "`classes` should be a positive integer"),
        ({"input_shape": (32, 32)}, "`input_shape` must be a tuple of three integers"),
        ({"input_shape": (16, 64, 3)}, "Input size must be at least 32x32"),
        ({"input_shape": (None, None, 3)}, "you should specify a static `input_shape`"),
        ({"include_top": False, "pooling": "mean"}, "`pooling` should be None"),
        ({"blocks_per_stage": (1, 1, 1)}, "`blocks_per_stage` must be four positive integers"),
        ({"blocks_per_stage": (1, 1, 257, 1)}, "`blocks_per_stage` must be four positive integers of at most 256"),
        ({"lambda_blocks": ((), (), (2,), ())}, r"stage c4 must be block indices in \[1, 1\]"),
        ({"lambda_blocks": ((0,), (), (), ())}, "1-based"),
        ({"se_ratio": 1.5}, "`se_ratio` must be"),
        ({"base": "resnet_v2"}, "`base` must be one of"),
        ({"stochastic_depth_rate": 1.0}, "`stochastic_depth_rate`"),
        # keras.applications' order: weights before classes before the input shape.
        ({"weights": "imagenet", "classes": 0, "input_shape": (8, 8, 3)}, "No ImageNet weights"),
        ({"classes": 0, "input_shape": (8, 8, 3)}, "`classes`"),
    ],
)
@structural
def test_validation_errors(kwargs, message):
    kwargs = {"blocks_per_stage": TINY_BLOCKS, "lambda_blocks": TINY_LAMBDAS, "input_shape": (32, 32, 3), **kwargs}
    with pytest.raises(ValueError, match=message):
        LambdaResNet(**kwargs)


@structural
def test_imagenet_weights_error_says_what_to_do():
    with pytest.raises(ValueError) as error:
        LambdaResNet50(weights="imagenet")
    assert "weights=None" in str(error.value) and ".weights.h5" in str(error.value)


def test_weights_file_suffix_and_placement_errors(tmp_path):
    wrong = tmp_path / "model.h5"
    wrong.write_bytes(b"")
    with pytest.raises(ValueError, match="must end in `.weights.h5` or `.keras`"):
        tiny(weights=str(wrong))
    with pytest.raises(ValueError, match="`placement` must be four characters"):
        HybridResNet50(placement="CCXL")


# --- the builder: model config (plain data) -> model ---------------------------------

TENSORFLOW = keras.backend.backend() == "tensorflow"
TINY_CONFIG = {
    "architecture": "LambdaResNet",
    "blocks_per_stage": list(TINY_BLOCKS),
    "lambda_blocks": [list(stage) for stage in TINY_LAMBDAS],
    "dropout_rate": 0.1,
    "lambda_layer": {"scope_size": 7, "key_dim": 8},
}


def test_build_model_is_the_constructor_with_serving_and_training_options():
    reference = tiny(dropout_rate=0.1, scope_size=7, key_dim=8)
    randomize(reference)
    built = build_model(
        TINY_CONFIG, input_shape=(32, 32, 3), classes=10, dtype_policy="mixed_bfloat16",
        head_dtype="float32", synchronized_batch_norm=TENSORFLOW,
    )
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert built.get_layer("predictions").dtype_policy.name == "float32"
    assert built.get_layer("c3_block1_lambda").compute_dtype == "bfloat16"
    norms = [layer for layer in built._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    # 20 in the model, 2 in each lambda layer; Keras synchronizes batch norms under TensorFlow only.
    assert len(norms) == 24 and all(norm.synchronized == TENSORFLOW for norm in norms)
    float32 = build_model(TINY_CONFIG, input_shape=(32, 32, 3), classes=10)
    float32.set_weights(reference.get_weights())
    np.testing.assert_array_equal(float32.predict(images(), verbose=0), reference.predict(images(), verbose=0))
    built.set_weights(reference.get_weights())
    np.testing.assert_allclose(built.predict(images(), verbose=0), reference.predict(images(), verbose=0), atol=0.05)


@structural
def test_width_multiplier_scales_the_stage_convolutions_not_the_stem():
    full, quarter = tiny(), tiny(width_multiplier=0.25)
    stage_outputs = [quarter.get_layer(f"{stage}_block1_out").output.shape[-1] for stage in ("c2", "c3", "c4", "c5")]
    assert stage_outputs == [64, 128, 256, 512]  # 4 x (16, 32, 64, 128)
    convolutions = [layer.name for layer in full.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 18  # the stem's 4; 4 per conv block, 3 per lambda block (a projection each)
    for name in convolutions:
        full_kernel = full.get_layer(name).kernel.shape
        quarter_kernel = quarter.get_layer(name).kernel.shape
        if name.startswith("stem"):
            assert quarter_kernel == full_kernel, name
            continue
        reads_stem = name in ("c2_block1_1_conv", "c2_block1_0_conv")  # the stem's 64 channels
        expected = (*full_kernel[:2], full_kernel[2] if reads_stem else full_kernel[2] // 4, full_kernel[3] // 4)
        assert quarter_kernel == expected, name
    lambda_layers = [layer for layer in quarter.layers if isinstance(layer, LambdaLayer)]
    assert [layer.output_filters for layer in lambda_layers] == [32, 128]  # c3 and c5: 128 / 4, 512 / 4
    np.testing.assert_allclose(quarter.predict(images(), verbose=0).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "model_config, message",
    [
        ({"architecture": "LambdaResNet51"}, "`architecture` must be one of"),
        ({"architecture": "LambdaResNet50", "placement": "LLLL"}, "`placement` applies only to HybridResNet50"),
        ({"architecture": "LambdaResNet"}, "needs blocks_per_stage and lambda_blocks"),
        ({"architecture": "LambdaResNet50", "depth": 50}, r"Unknown model config key\(s\) \['depth'\]"),
        ({"architecture": "LambdaResNet50", "lambda_layer": {"scope_size": 8}}, "`scope_size` must be odd"),
        ({"architecture": "LambdaResNet50", "lambda_layer": {"strides": 2}}, r"Unknown lambda_layer argument"),
        ({"architecture": "HybridResNet50", "placement": "LLXL"}, "`placement` must be four characters"),
        ({**TINY_CONFIG, "lambda_blocks": [[], [], [2], []]}, r"stage c4 must be block indices in \[1, 1\]"),
        ({"architecture": "ResNetRS50", "se_ratio": 2.0}, "`se_ratio` must be"),
        ({**TINY_CONFIG, "width_multiplier": 0.3}, "`width_multiplier` must be a number in"),
        ({"architecture": "LambdaResNet26T", "width_multiplier": 0.5}, "`width_multiplier` applies only to Lambda"),
    ],
)
@structural
def test_model_config_errors_name_the_key(model_config, message):
    with pytest.raises(ValueError, match=message):
        validate_model_config(model_config)


@structural
def test_every_variant_has_a_constructor_and_its_docstring():
    assert set(CONSTRUCTORS) == set(variants.ARCHITECTURES)
    for variant in variants.VARIANTS:
        doc = CONSTRUCTORS[variant.name].__doc__
        assert f"{variant.parameters / 1e6:.1f} M parameters" in doc and "keras.applications arguments" in doc
        if variant.paper is not None:
            assert f"({variant.paper[1]}: {variant.paper[0]} M)" in doc


@pytest.fixture
def channels_first():
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format("channels_last")


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow" and not kernel_support.has_dilated_transposed_convolution(),
    reason="TensorFlow's CPU convolutions without oneDNN take NHWC only (keras.applications models fail alike)",
)
def test_channels_first_gives_the_channels_last_numbers():
    """As keras.applications: under ``channels_first`` the same model takes
    ``[batch, 3, height, width]``, with the same weights and the same outputs."""
    last = tiny(classifier_activation=None)
    randomize(last)
    x = images()
    expected = keras.ops.convert_to_numpy(last(x, training=False))
    keras.config.set_image_data_format("channels_first")
    try:
        first = tiny(input_shape=(3, 32, 32), classifier_activation=None)
        first.set_weights(last.get_weights())
        outputs = keras.ops.convert_to_numpy(first(x.transpose(0, 3, 1, 2), training=False))
        features = tiny(input_shape=(3, 32, 32), include_top=False)
        assert features.output_shape == (None, 2048, 1, 1)
        assert LambdaResNet50(include_top=False).input_shape == (None, 3, None, None)
        assert LambdaResNet50(weights=None).input_shape == (None, 3, 224, 224)
        assert multiply_adds(first) == multiply_adds(last)
    finally:
        keras.config.set_image_data_format("channels_last")
    np.testing.assert_allclose(outputs, expected, atol=1e-4, rtol=1e-4)


@structural
def test_channels_first_input_shape_is_validated(channels_first):
    with pytest.raises(ValueError, match="at least 32x32"):
        tiny(input_shape=(3, 16, 16))
    with pytest.warns(UserWarning, match="1 or 3 input channels"):
        tiny(input_shape=(4, 32, 32), include_top=False)


@structural
def test_unusual_channel_count_warns():
    with pytest.warns(UserWarning, match="1 or 3 input channels"):
        tiny(input_shape=(32, 32, 4), include_top=False)


# --- saving ------------------------------------------------------------------------


def test_keras_save_and_load_gives_identical_outputs(tmp_path):
    model = tiny(stochastic_depth_rate=0.1, dropout_rate=0.2)
    randomize(model)
    x = images()
    expected = keras.ops.convert_to_numpy(model(x))
    path = os.fspath(tmp_path / "tiny.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), expected)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert isinstance(loaded.get_layer("c5_block1_drop"), StochasticDepth)
    assert loaded.get_layer("c5_block1_drop").rate == pytest.approx(0.1)

    # `weights=` takes the .keras archive or a .weights.h5 file.
    from_archive = tiny(stochastic_depth_rate=0.1, dropout_rate=0.2, weights=path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(from_archive(x)), expected)
    weights_path = os.fspath(tmp_path / "tiny.weights.h5")
    model.save_weights(weights_path)
    from_weights = tiny(stochastic_depth_rate=0.1, dropout_rate=0.2, weights=weights_path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(from_weights(x)), expected)


def test_timm_options_round_trip_through_a_keras_file(tmp_path):
    """The tiered stem, SiLU, the 2x2 lambda pool and the position bias (timm's options) save and load."""
    model = tiny(base="tiered", activation="silu", lambda_pool_size=2, lambda_position_bias=True, scope_size=3)
    randomize(model)
    assert model.get_layer("c3_block1_lambda").pool_size == 2
    assert model.get_layer("c3_block1_lambda").use_position_bias
    x = images()
    expected = keras.ops.convert_to_numpy(model(x))
    path = os.fspath(tmp_path / "tiered.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6, rtol=0)


def test_stem_max_pool_pads_minus_infinity_on_both_sides_like_pytorch():
    """MaxPool2d(3, 2, padding=1): windows start at -1; padding never wins, even over negative inputs (SiLU)."""
    x = -1.0 - np.random.default_rng(0).random((1, 6, 7, 2)).astype("float32")
    outputs = keras.ops.convert_to_numpy(SymmetricMaxPooling2D(3, strides=2, padding=1)(x))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    expected = np.array([[padded[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(0, 1)) for j in range(4)]
                         for i in range(3)])
    assert outputs.shape == (1, 3, 4, 2) == SymmetricMaxPooling2D(3, 2, 1).compute_output_shape((1, 6, 7, 2))
    np.testing.assert_array_equal(outputs[0], expected)


# --- imagenet_utils ----------------------------------------------------------------


@structural
def test_decode_predictions_offline():
    import importlib.util
    from pathlib import Path

    from lambda_keras.imagenet_utils import decode_predictions, imagenet_classes

    preds = np.zeros((2, 1000), "float32")
    preds[0, 1], preds[0, 0], preds[1, 999] = 0.9, 0.1, 1.0
    decoded = decode_predictions(preds, top=2)
    assert decoded[0] == [("n01443537", "goldfish", pytest.approx(0.9)), ("n01440764", "tench", pytest.approx(0.1))]
    assert decoded[1][0] == ("n15075141", "toilet_tissue", 1.0)
    with pytest.raises(ValueError, match=r"shape \(samples, 1000\)"):
        decode_predictions(preds[:, :10])
    # Label i is TFDS imagenet2012's label i (sorted synsets), when TFDS is installed.
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is not None:
        labels = Path(spec.origin).parent / "datasets" / "imagenet2012" / "labels.txt"
        assert [synset for synset, _ in imagenet_classes()] == labels.read_text().split()


def test_preprocess_input_is_imagenet_mean_and_std():
    from lambda_keras.imagenet_utils import preprocess_input

    x = np.stack([np.zeros((2, 2, 3)), np.full((2, 2, 3), 255.0)]).astype("float32")
    out = keras.ops.convert_to_numpy(preprocess_input(x))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[0, 0, 0], -mean / std, rtol=1e-5)
    np.testing.assert_allclose(out[1, 1, 1], (1 - mean) / std, rtol=1e-5)


@structural
def test_scope_pairs_count_in_scope_offsets():
    for length, scope, causal in [(7, 3, False), (5, 23, False), (9, None, False), (8, 5, True)]:
        half = length if scope is None else scope // 2
        brute = sum(
            1 for query in range(length) for context in range(length)
            if abs(context - query) <= half and (not causal or context <= query)
        )
        assert complexity.scope_pairs(length, scope, causal) == brute


@structural
def test_multiply_adds_counts_convs_dense_and_lambda_layers():
    inputs = keras.Input((6, 5, 8))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 3x3 out, 9 taps, 8 -> 4
    x = keras.layers.Conv2D(16, 1)(x)
    x = LambdaLayer(key_dim=4, num_heads=2, intra_depth=2, scope_size=3)(x)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    # Lambda layer on 3x3x16, k=4, h=2, u=2, v=8: projections 9*16*(8+8+16), content
    # lambda 9*2*4*8, 7x7 in-scope pairs for r=3 on 3x3 ((3+2+2)^2 ... per axis 7),
    # applying the lambdas 9*2*4*8.
    lambda_cost = 9 * 16 * 32 + 9 * 2 * 4 * 8 + 7 * 7 * 2 * 4 * 8 + 9 * 2 * 4 * 8
    expected = 3 * 3 * 4 * 9 * 8 + 3 * 3 * 16 * 4 + lambda_cost + 16 * 10
    assert multiply_adds(model) == expected


@structural
def test_multiply_adds_of_resnet50_is_the_quoted_4_1_g():
    # ResNet-50 "has 4.1 GFLOPs" (multiply-adds; 4.09 G for the torchvision layout).
    assert multiply_adds(HybridResNet50(placement="CCCC")) / 1e9 == pytest.approx(4.09, abs=0.01)


def test_fit_learns_digits():
    """``model.fit`` of a small lambda network on scikit-learn's 8x8 digits reaches a
    real accuracy under whichever backend runs the tests (the same code, every backend)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = digits.target
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    # Momentum 0.9: the moving statistics settle within the 190 steps of this fit.
    features = LambdaLayer(key_dim=8, num_heads=4, scope_size=5, norm_momentum=0.9)(features)
    features = keras.layers.BatchNormalization(momentum=0.9)(features)
    features = keras.layers.ReLU()(features)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x[:1500], y[:1500], batch_size=64, epochs=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # The 297 held-out digits in one batch: one compiled test step under JAX, not two.
    _, accuracy = model.evaluate(x[1500:], y[1500:], batch_size=297, verbose=0)
    assert accuracy > 0.85, (accuracy, history.history)


# --- multi-scale features (detection backbones) -----------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_feature_extractor_gives_p2_to_p5_at_any_input_size(size):
    model = LambdaResNet(TINY_BLOCKS, TINY_LAMBDAS, include_top=False, input_shape=(None, None, 3), scope_size=7)
    randomize(model)
    features = feature_extractor(model)
    height, width = size
    batch = np.random.default_rng(2).uniform(-1, 1, (2, height, width, 3)).astype("float32")
    outputs = features.predict(batch, verbose=0)
    assert {level: outputs[level].shape for level in outputs} == {
        f"P{level}": (2, height // 2**level, width // 2**level, 64 * 2 ** (level - 2) * 4) for level in (2, 3, 4, 5)
    }
    # P5 is the backbone's own output, with the same weights.
    np.testing.assert_allclose(outputs["P5"], model.predict(batch, verbose=0), rtol=1e-5, atol=1e-5)


@structural
def test_pyramid_layer_names_of_the_named_models(lambda_resnet50):
    assert features.pyramid_layer_names(lambda_resnet50) == {
        "P2": "c2_block3_out", "P3": "c3_block4_out", "P4": "c4_block6_out", "P5": "c5_block3_out"}
    with pytest.raises(ValueError, match="no block outputs for stage"):
        feature_extractor(keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]))
