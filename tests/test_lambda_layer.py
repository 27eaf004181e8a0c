"""LambdaLayer against the NumPy restatement of the paper (tests/lambda_reference.py)."""

import keras
import numpy as np
import pytest

import lambda_reference as reference
from backend_gradients import loss_gradients
from lambda_keras import LambdaLayer
from lambda_keras.layers import kernel_support
from lambda_keras.layers.lambda_convolution import lambda_convolution

ATOL = 1e-5

def to_numpy(tensor, dtype=None) -> np.ndarray:
    """Any backend's tensor (a PyTorch one that requires grad too) as a NumPy array."""
    array = keras.ops.convert_to_numpy(tensor)
    return array if dtype is None else array.astype(dtype)


# These use tf.function and tf.distribute; every other test here runs under each backend.
requires_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow-only API (tf.function, tf.distribute)"
)


def randomize(layer: LambdaLayer, input_shape, seed: int = 0) -> dict:
    """Builds ``layer`` and gives every weight, BN statistics included, random values.

    Scales keep the outputs of order one so that a float32 atol of 1e-5 is meaningful.
    Returns the weights in the form ``lambda_reference.lambda_layer`` takes.
    """
    rng = np.random.default_rng(seed)
    if not layer.built:
        layer.build(input_shape)
    weights = {}
    for name in ("query_kernel", "key_kernel", "value_kernel"):
        if hasattr(layer, name):
            variable = getattr(layer, name)
            value = rng.normal(scale=1.0 / np.sqrt(variable.shape[0]), size=variable.shape)
            variable.assign(value.astype("float32"))
            weights[name] = value.astype("float32").astype(np.float64)
    for name in ("query_norm", "value_norm"):
        norm = getattr(layer, name)
        if norm is None:  # use_batch_norm=False
            continue
        channels = norm.gamma.shape[0]
        stats = (
            rng.uniform(0.5, 1.5, channels),
            rng.normal(scale=0.1, size=channels),
            rng.normal(scale=0.1, size=channels),
            rng.uniform(0.5, 2.0, channels),
        )
        for variable, value in zip((norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance), stats):
            variable.assign(value.astype("float32"))
        weights[name] = tuple(value.astype("float32").astype(np.float64) for value in stats)
    if layer.use_position:
        table = layer.position_embeddings
        value = rng.normal(scale=0.2, size=table.shape).astype("float32")
        table.assign(value)
        weights["position_embeddings"] = value.astype(np.float64)
    return weights


def run_reference(layer: LambdaLayer, inputs, weights, **kwargs):
    return reference.lambda_layer(
        inputs,
        weights,
        key_dim=layer.key_dim,
        num_heads=layer.num_heads,
        intra_depth=layer.intra_depth,
        use_content=layer.use_content,
        use_position=layer.use_position,
        causal=layer.causal,
        epsilon=layer.norm_epsilon,
        key_normalization=layer.key_normalization,
        query_softmax=layer.query_softmax,
        use_batch_norm=layer.use_batch_norm,
        **kwargs,
    )


def random_inputs(shape, seed=1, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


REFERENCE_CASES = [
    # (input shape, key_dim, num_heads, intra_depth, scope_size, use_content, use_position)
    pytest.param((2, 11, 8), 4, 2, 1, 5, True, True, id="seq-k4h2u1-r5"),
    pytest.param((2, 9, 12), 8, 4, 3, 3, True, True, id="seq-k8h4u3-r3"),
    pytest.param((2, 7, 8), 4, 2, 2, None, True, True, id="seq-global-u2"),
    pytest.param((2, 5, 7, 8), 4, 2, 1, 3, True, True, id="img5x7-k4h2u1-r3"),
    pytest.param((1, 6, 4, 16), 4, 4, 2, 5, True, True, id="img6x4-k4h4u2-r5"),
    pytest.param((2, 4, 6, 8), 2, 2, 1, None, True, True, id="img4x6-global"),
    pytest.param((2, 5, 6, 12), 4, 3, 2, 23, True, True, id="img5x6-r23-wider-than-input"),
    pytest.param((2, 5, 7, 8), 4, 2, 1, 3, True, False, id="img-content-only"),
    pytest.param((2, 5, 7, 8), 4, 2, 2, 3, False, True, id="img-position-only"),
    # h (k + v) < k v: the einsum contracts queries with the embeddings first.
    pytest.param((2, 9, 16), 4, 2, 2, 5, True, True, id="seq-queries-first"),
    pytest.param((2, 5, 6, 16), 4, 2, 2, 3, True, True, id="img-queries-first"),
    pytest.param((2, 4, 5, 16), 4, 2, 1, None, False, True, id="img-global-queries-first"),
]


@pytest.mark.parametrize("implementation", ["einsum", "conv", "banded"])
@pytest.mark.parametrize(
    "shape,key_dim,num_heads,intra_depth,scope_size,use_content,use_position", REFERENCE_CASES
)
def test_matches_numpy_reference(
    shape, key_dim, num_heads, intra_depth, scope_size, use_content, use_position, implementation
):
    layer = LambdaLayer(
        key_dim=key_dim,
        num_heads=num_heads,
        intra_depth=intra_depth,
        scope_size=scope_size,
        use_content=use_content,
        use_position=use_position,
        implementation=implementation,
    )
    weights = randomize(layer, shape)
    inputs = random_inputs(shape)
    outputs = to_numpy(layer(inputs, training=False))
    expected = run_reference(layer, inputs, weights)
    assert outputs.shape == expected.shape
    np.testing.assert_allclose(outputs, expected, atol=ATOL, rtol=0)


TABLE_12_VARIANTS = [
    pytest.param({"query_softmax": True}, id="softmax-on-queries"),
    pytest.param({"key_normalization": "l2"}, id="l2-keys"),
    pytest.param({"key_normalization": "none"}, id="no-key-normalization"),
    pytest.param({"use_batch_norm": False}, id="no-batch-norm"),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", TABLE_12_VARIANTS)
def test_table_12_normalization_variants_match_reference(variant, causal):
    layer = LambdaLayer(key_dim=4, num_heads=2, intra_depth=2, scope_size=5, causal=causal, **variant)
    shape = (2, 9, 8)
    weights = randomize(layer, shape)
    inputs = random_inputs(shape)
    np.testing.assert_allclose(
        to_numpy(layer(inputs)), run_reference(layer, inputs, weights), atol=ATOL, rtol=0
    )
    assert LambdaLayer.from_config(layer.get_config()).get_config() == layer.get_config()


def test_no_batch_norm_layer_has_no_norm_weights():
    layer = LambdaLayer(key_dim=4, num_heads=2, use_batch_norm=False)
    layer.build((1, 5, 5, 8))
    assert sorted(weight.name for weight in layer.weights) == [
        "key_kernel", "position_embeddings", "query_kernel", "value_kernel"
    ]


def test_filters_differ_from_input_channels():
    layer = LambdaLayer(filters=12, key_dim=4, num_heads=3, scope_size=3)
    weights = randomize(layer, (2, 4, 5, 8))
    inputs = random_inputs((2, 4, 5, 8))
    outputs = to_numpy(layer(inputs, training=False))
    assert outputs.shape == (2, 4, 5, 12)
    np.testing.assert_allclose(outputs, run_reference(layer, inputs, weights), atol=ATOL, rtol=0)


def test_implementations_agree_at_paper_defaults():
    """k=16, h=4, u=1, r=23 on a 16x16x32 map: every implementation, same weights.

    Lambdas reach ~50 here and cancel to outputs near 1, so float32 rounding of the two
    summation orders gets atol 1e-4."""
    layer = LambdaLayer(implementation="einsum")
    randomize(layer, (2, 16, 16, 32))
    inputs = random_inputs((2, 16, 16, 32))
    einsum_outputs = to_numpy(layer(inputs))
    for implementation in ("conv", "banded"):
        layer.implementation = implementation
        np.testing.assert_allclose(to_numpy(layer(inputs)), einsum_outputs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["einsum", "conv", "banded"])
def test_local_scope_covering_input_equals_global(implementation):
    """r = 2n - 1 on an n x n input is the global variant, table copied."""
    size = 5
    local = LambdaLayer(key_dim=4, num_heads=2, intra_depth=2, scope_size=2 * size - 1, implementation=implementation)
    global_ = LambdaLayer(key_dim=4, num_heads=2, intra_depth=2, scope_size=None, implementation="einsum")
    shape = (2, size, size, 8)
    randomize(local, shape)
    global_.build(shape)
    assert global_.position_embeddings.shape == local.position_embeddings.shape == (9, 9, 4, 2)
    global_.set_weights(local.get_weights())
    inputs = random_inputs(shape)
    np.testing.assert_allclose(to_numpy(local(inputs)), to_numpy(global_(inputs)), atol=ATOL, rtol=0)


def test_relative_offset_is_context_minus_query():
    """A table that is non-zero only at offset (+1, 0) makes query (y, x) read context (y+1, x)."""
    layer = LambdaLayer(filters=4, key_dim=1, num_heads=1, scope_size=3, use_content=False, implementation="einsum")
    layer.build((1, 3, 3, 4))
    layer.query_kernel.assign(np.ones((4, 1), "float32"))
    layer.value_kernel.assign(np.eye(4, dtype="float32"))
    for norm in (layer.query_norm, layer.value_norm):
        norm.moving_variance.assign(np.full(norm.moving_variance.shape, 1 - 1e-3, "float32"))
    table = np.zeros((3, 3, 1, 1), "float32")
    table[2, 1] = 1.0  # offset (+1 row, 0 cols)
    layer.position_embeddings.assign(table)
    inputs = np.arange(36, dtype="float32").reshape(1, 3, 3, 4)
    outputs = to_numpy(layer(inputs))
    # query = sum of inputs; values = inputs; output = query * value(row below), zero on the last row.
    queries = inputs.sum(-1, keepdims=True)
    expected = np.zeros_like(inputs)
    expected[:, :2] = queries[:, :2] * inputs[:, 1:]
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


def test_keys_are_normalized_over_positions_not_key_depth():
    """With every value equal to 1, a softmax over positions makes each content-lambda row
    sum to 1, so the output is the sum of the queries over k; a softmax over the key depth
    (two TF peers' bug) would give m times a distribution over k instead."""
    layer = LambdaLayer(key_dim=4, num_heads=2, use_position=False)
    shape = (2, 6, 8)
    randomize(layer, shape)
    layer.value_norm.gamma.assign(np.zeros(4, "float32"))
    layer.value_norm.beta.assign(np.ones(4, "float32"))
    inputs = random_inputs(shape, scale=3.0)
    outputs = to_numpy(layer(inputs)).reshape(2, 6, 2, 4)
    queries = to_numpy(layer.query_norm(inputs @ to_numpy(layer.query_kernel))).reshape(2, 6, 2, 4)
    np.testing.assert_allclose(outputs, np.repeat(queries.sum(-1, keepdims=True), 4, axis=-1), atol=ATOL)


@pytest.mark.parametrize("channels", [8, 16])  # 16: the einsum takes the queries-first order
@pytest.mark.parametrize("scope_size", [5, None])
@pytest.mark.parametrize("implementation", ["einsum", "conv"])
def test_causal_matches_reference(scope_size, implementation, channels):
    layer = LambdaLayer(
        key_dim=4, num_heads=2, intra_depth=2, scope_size=scope_size, causal=True, implementation=implementation
    )
    shape = (2, 9, channels)
    weights = randomize(layer, shape)
    inputs = random_inputs(shape)
    np.testing.assert_allclose(
        to_numpy(layer(inputs)), run_reference(layer, inputs, weights), atol=ATOL, rtol=0
    )


def test_causal_output_ignores_the_future():
    layer = LambdaLayer(key_dim=4, num_heads=2, scope_size=7, causal=True)
    shape = (2, 12, 8)
    randomize(layer, shape)
    inputs = random_inputs(shape)
    changed = inputs.copy()
    changed[:, 6:] = random_inputs((2, 6, 8), seed=5, scale=10.0)
    before, after = to_numpy(layer(inputs)), to_numpy(layer(changed))
    np.testing.assert_array_equal(before[:, :6], after[:, :6])
    assert np.abs(before[:, 6:] - after[:, 6:]).max() > 1e-2


def test_causal_content_is_stable_for_huge_keys():
    """Keys of magnitude ~1e4 overflow exp() and a global-max shift underflows early
    prefixes; the running-max scan must still match the exact per-query softmax."""
    layer = LambdaLayer(key_dim=4, num_heads=2, scope_size=3, causal=True, use_position=False)
    shape = (1, 10, 8)
    weights = randomize(layer, shape)
    inputs = random_inputs(shape, scale=1e3)
    outputs = to_numpy(layer(inputs))
    assert np.isfinite(outputs).all()
    expected = run_reference(layer, inputs, weights)
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("key_normalization", ["softmax", "l2", "none"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_excludes_padded_positions(causal, key_normalization):
    """Outputs at real positions of a padded, masked batch equal those of the unpadded input."""
    inputs_layer = keras.Input((None, 8))
    masked = keras.layers.Masking(mask_value=0.0)(inputs_layer)
    layer = LambdaLayer(key_dim=4, num_heads=2, intra_depth=2, scope_size=5, causal=causal,
                        key_normalization=key_normalization)
    model = keras.Model(inputs_layer, layer(masked))
    randomize(layer, (None, None, 8))
    real = random_inputs((1, 7, 8))
    padded = np.concatenate([real, np.zeros((1, 4, 8), "float32")], axis=1)
    np.testing.assert_allclose(
        to_numpy(model(padded))[:, :7], to_numpy(model(real)), atol=ATOL, rtol=0
    )
    # and the reference agrees when told about the mask
    weights = randomize(layer, (None, None, 8))
    mask = np.array([[True] * 7 + [False] * 4])
    np.testing.assert_allclose(
        to_numpy(layer(padded, mask=mask))[:, :7],
        run_reference(layer, padded, weights, mask=mask)[:, :7],
        atol=ATOL,
        rtol=0,
    )


@pytest.mark.parametrize("pool_size", [3, 2])  # 3: the paper's; 2: timm's
@pytest.mark.parametrize("shape", [(2, 9, 8), (2, 10, 8), (2, 5, 7, 8), (2, 6, 8, 8)])
def test_strides_two_average_pools_after_the_layer(shape, pool_size):
    """Odd and even sizes: the 'same' pool with stride 2 averages only real positions."""
    strided = LambdaLayer(key_dim=4, num_heads=2, scope_size=3, strides=2, pool_size=pool_size)
    weights = randomize(strided, shape)
    inputs = random_inputs(shape)
    outputs = to_numpy(strided(inputs))
    expected = reference.average_pool_same(run_reference(strided, inputs, weights), pool_size=pool_size)
    assert outputs.shape == expected.shape == strided.compute_output_shape(shape)
    np.testing.assert_allclose(outputs, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("channels", [8, 16])  # 16: the einsum takes the queries-first order
def test_position_bias_adds_query_weighted_bias(channels):
    layer = LambdaLayer(key_dim=4, num_heads=2, scope_size=3, use_position_bias=True)
    shape = (1, 4, 4, channels)
    weights = randomize(layer, shape)
    bias = np.array([0.5, -1.0, 2.0, 0.25], "float32")
    layer.position_bias.assign(bias)
    inputs = random_inputs(shape)
    queries = reference.batch_norm(
        inputs.reshape(1, 16, channels) @ weights["query_kernel"], *weights["query_norm"], 1e-3
    ).reshape(1, 4, 4, 2, 4)
    value_dim = channels // 2
    bias_term = np.repeat((queries @ bias)[..., None], value_dim, axis=-1).reshape(1, 4, 4, channels)
    for implementation in ("einsum", "conv", "banded"):
        layer.implementation = implementation
        np.testing.assert_allclose(
            to_numpy(layer(inputs)), run_reference(layer, inputs, weights) + bias_term, atol=ATOL, rtol=0
        )


def test_initialisation_follows_appendix_e1():
    layer = LambdaLayer(filters=256, key_dim=16, num_heads=4, scope_size=23)
    layer.build((1, 8, 8, 256))
    np.testing.assert_allclose(np.std(layer.query_kernel), 1 / np.sqrt(16 * 256), rtol=0.05)
    np.testing.assert_allclose(np.std(layer.key_kernel), 1 / np.sqrt(256), rtol=0.05)
    np.testing.assert_allclose(np.std(layer.value_kernel), 1 / np.sqrt(256), rtol=0.05)
    np.testing.assert_allclose(np.std(layer.position_embeddings), 1.0, rtol=0.05)
    assert layer.position_embeddings.shape == (23, 23, 16, 1)
    # Trainable parameters at d=256 (BN moving statistics excluded).
    trainable = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    assert trainable == 256 * (4 * 16 + 16 + 64) + 2 * 64 + 2 * 64 + 23 * 23 * 16


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_is_finite_and_close(policy):
    shape = (2, 6, 6, 16)
    reference_layer = LambdaLayer(key_dim=4, num_heads=4, scope_size=5)
    randomize(reference_layer, shape)
    keras.config.set_dtype_policy(policy)
    layer = LambdaLayer(key_dim=4, num_heads=4, scope_size=5)
    layer.build(shape)
    layer.set_weights(reference_layer.get_weights())
    assert layer.position_embeddings.dtype == "float32"
    inputs = random_inputs(shape)
    outputs = layer(inputs)
    assert keras.backend.standardize_dtype(outputs.dtype) == policy.split("_")[1]
    expected = to_numpy(reference_layer(inputs))
    np.testing.assert_allclose(to_numpy(outputs, "float32"), expected, atol=0.1 * np.abs(expected).max())
    huge = to_numpy(layer(inputs * 1e3, training=True), "float32")
    assert np.isfinite(huge).all()


def test_get_config_round_trip_and_serialization():
    layer = LambdaLayer(
        filters=12, key_dim=8, num_heads=3, intra_depth=2, scope_size=7, use_content=False, causal=True,
        strides=2, implementation="conv", use_position_bias=True, norm_momentum=0.9, norm_epsilon=1e-5, name="lam",
    )
    config = layer.get_config()
    restored = LambdaLayer.from_config(config)
    assert restored.get_config() == config
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)).get_config() == config


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    inputs = keras.Input((None, None, 16))
    outputs = LambdaLayer(key_dim=4, num_heads=4, scope_size=5, strides=2, name="lambda")(inputs)
    model = keras.Model(inputs, outputs)
    randomize(model.get_layer("lambda"), (None, None, None, 16))
    path = tmp_path / "lambda.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    images = random_inputs((2, 9, 6, 16))
    np.testing.assert_array_equal(to_numpy(model(images)), to_numpy(restored(images)))


def test_dynamic_batch_and_spatial_size():
    layer = LambdaLayer(key_dim=4, num_heads=2, scope_size=5)
    model = keras.Sequential([keras.Input((None, None, 8)), layer])
    weights = randomize(layer, (None, None, None, 8))
    for shape in [(1, 4, 6, 8), (3, 7, 5, 8)]:
        inputs = random_inputs(shape)
        np.testing.assert_allclose(to_numpy(model(inputs)), run_reference(layer, inputs, weights), atol=ATOL)
    assert model.output_shape == (None, None, None, 8)


@requires_tensorflow
@pytest.mark.parametrize("implementation", ["einsum", "conv", "banded"])
def test_xla_matches_eager(implementation):
    import tensorflow as tf

    layer = LambdaLayer(key_dim=4, num_heads=2, intra_depth=2, scope_size=5, implementation=implementation)
    randomize(layer, (2, 6, 7, 8))
    inputs = random_inputs((2, 6, 7, 8))
    compiled = tf.function(lambda x: layer(x, training=False), jit_compile=True)
    np.testing.assert_allclose(to_numpy(compiled(inputs)), to_numpy(layer(inputs)), atol=ATOL)
    causal = LambdaLayer(key_dim=4, num_heads=2, scope_size=3, causal=True, implementation=implementation)
    randomize(causal, (2, 9, 8))
    sequence = random_inputs((2, 9, 8))
    compiled = tf.function(lambda x: causal(x), jit_compile=True)
    np.testing.assert_allclose(to_numpy(compiled(sequence)), to_numpy(causal(sequence)), atol=ATOL)


@requires_tensorflow
def test_mirrored_strategy_matches_single_device():
    import tensorflow as tf

    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest.py configures two logical CPU devices"
    inputs = random_inputs((4, 6, 6, 8))
    single = LambdaLayer(key_dim=4, num_heads=2, scope_size=5)
    randomize(single, inputs.shape)
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    with strategy.scope():
        replicated = LambdaLayer(key_dim=4, num_heads=2, scope_size=5)
        replicated.build(inputs.shape)
        replicated.set_weights(single.get_weights())

    @tf.function
    def step(batch):
        return strategy.run(lambda x: replicated(x, training=False), args=(batch,))

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(inputs).batch(4))
    per_replica = step(next(iter(dataset)))
    outputs = np.concatenate([to_numpy(t) for t in strategy.experimental_local_results(per_replica)])
    np.testing.assert_allclose(outputs, to_numpy(single(inputs)), atol=ATOL)


@pytest.mark.parametrize("scope_size", [9, 23, None])
@pytest.mark.parametrize("platform", ["cpu", "cpu_without_dilated_convolution", "cpu_jax", "gpu", "tpu"])
def test_auto_picks_by_size_training_scope_and_platform(platform, scope_size, monkeypatch):
    from lambda_keras.layers import lambda_layer as module

    monkeypatch.setattr(module, "_auto_platform", lambda: platform)
    layer = LambdaLayer(scope_size=scope_size)
    small_scope = scope_size is not None and scope_size < 15
    # The einsum's largest input, (inference, training): TPU, the paper's Section 5 switch;
    # JAX on the CPU, 16x16; the other CPUs hand over sooner for small scopes.
    einsum_max = {
        "cpu": (12 * 12, 16 * 16) if small_scope else (20 * 20, 20 * 20),
        "cpu_without_dilated_convolution": (16 * 16, 16 * 16) if small_scope else (20 * 20, 20 * 20),
        "cpu_jax": (16 * 16, 16 * 16),
        "gpu": (20 * 20, 20 * 20),
        "tpu": (85 * 85, 85 * 85),
    }[platform]
    for training, positions in zip((False, True), einsum_max):
        assert layer.resolve_implementation(positions, training=training) == "einsum"
        # Only oneDNN's and PyTorch's CPU kernels make the convolution the fastest inference.
        banded_runs = training or platform in ("cpu_without_dilated_convolution", "cpu_jax", "gpu")
        expected = "conv" if platform == "tpu" or not banded_runs else "banded"
        assert layer.resolve_implementation(positions + 1, training=training) == expected
        assert layer.resolve_implementation(90 * 90, training=training) == "conv"
        assert layer.resolve_implementation(None, training=training) == "conv"  # size unknown: no n x m tensor
    assert LambdaLayer(implementation="einsum").resolve_implementation(10**6) == "einsum"


def test_auto_platform_of_this_process():
    """This test process is CPU-only: JAX has its own CPU table; otherwise oneDNN decides
    between the other two."""
    from lambda_keras.layers import lambda_layer as module

    assert kernel_support.accelerator() == "cpu"
    if keras.backend.backend() == "jax":
        expected = "cpu_jax"
    else:
        expected = "cpu" if kernel_support.has_dilated_transposed_convolution() else "cpu_without_dilated_convolution"
    assert module._auto_platform() == expected


def test_convolution_form_follows_the_platform_kernels():
    """oneDNN off (TensorFlow CPU): no dilated transposed convolution, the folded form runs."""
    from lambda_keras.layers import lambda_layer as module

    expected = "dilated" if kernel_support.has_dilated_transposed_convolution() else "folded"
    assert module._convolution_form() == expected
    if keras.backend.backend() != "tensorflow":
        assert expected == "dilated"


@pytest.mark.parametrize("form", ["dilated", "folded"])
@pytest.mark.parametrize(
    "spatial_shape,intra_depth,extents",
    [((11,), 1, (5,)), ((9,), 3, (3,)), ((5, 7), 1, (3, 3)), ((6, 4), 2, (5, 5)), ((4, 5), 2, (7, 9))],
)
def test_lambda_convolution_forms_match_numpy(spatial_shape, intra_depth, extents, form):
    """Both forward forms of the lambda convolution give ``sum_{m,u} E[n,m,k,u] V[m,u,v]``."""
    if form == "dilated" and not kernel_support.has_dilated_transposed_convolution():
        pytest.skip("this platform has no dilated transposed convolution (TensorFlow CPU without oneDNN)")
    rng = np.random.default_rng(0)
    positions, key_dim, value_dim = int(np.prod(spatial_shape)), 3, 4
    values = rng.normal(size=(2, positions, intra_depth, value_dim)).astype("float32")
    table = rng.normal(size=extents + (key_dim, intra_depth)).astype("float32")
    lambdas = to_numpy(lambda_convolution(values, table, spatial_shape, form))  # [b, n, v, k]
    embeddings = reference.relative_embeddings(table.astype(np.float64), spatial_shape)
    expected = np.einsum("nmku,bmuv->bnvk", embeddings, values.astype(np.float64))
    np.testing.assert_allclose(lambdas, expected, atol=ATOL, rtol=0)


def test_lambda_convolution_refuses_an_unknown_form():
    with pytest.raises(ValueError, match="form"):
        lambda_convolution(np.zeros((1, 4, 1, 2), "float32"), np.zeros((3, 2, 1), "float32"), (4,), "fft")


def batch_statistics(inputs, kernel):
    """Mean and (biased) variance over batch and positions of ``inputs @ kernel``."""
    projected = inputs.reshape(-1, inputs.shape[-1]).astype(np.float64) @ kernel
    return projected.mean(axis=0), projected.var(axis=0)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("implementation", ["einsum", "conv", "banded", "auto"])
def test_paper_defaults_at_30x30_match_reference(implementation, training):
    """k=16, h=4, u=1, r=23 on 30x30x32, where "auto" takes the convolution (or the
    banded product); training calls normalise with the batch statistics."""
    shape = (2, 30, 30, 32)
    layer = LambdaLayer(implementation=implementation)
    weights = randomize(layer, shape)
    inputs = random_inputs(shape)
    if training:
        for name, kernel in (("query_norm", "query_kernel"), ("value_norm", "value_kernel")):
            gamma, beta, _, _ = weights[name]
            weights[name] = (gamma, beta) + batch_statistics(inputs, weights[kernel])
    outputs = to_numpy(layer(inputs, training=training))
    np.testing.assert_allclose(outputs, run_reference(layer, inputs, weights), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"filters": 10, "num_heads": 4}, "filters"),
        ({"scope_size": 4}, "scope_size"),
        ({"scope_size": 0}, "scope_size"),
        ({"scope_size": -3}, "scope_size"),
        ({"intra_depth": 0}, "intra_depth"),
        ({"key_dim": 0}, "key_dim"),
        ({"strides": 3}, "strides"),
        ({"strides": 2, "pool_size": 4}, "pool_size"),
        ({"implementation": "fft"}, "implementation"),
        ({"key_normalization": "l1"}, "key_normalization"),
        ({"use_content": False, "use_position": False}, "use_content"),
        ({"norm_epsilon": -1}, "norm_epsilon"),
        ({"norm_epsilon": 0}, "norm_epsilon"),
        ({"norm_momentum": 5}, "norm_momentum"),
        ({"norm_momentum": -0.1}, "norm_momentum"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        LambdaLayer(**kwargs)
    value = next(iter(kwargs.values()))
    assert str(value) in str(error.value)


@pytest.mark.parametrize(
    "kwargs,shape,message",
    [
        ({}, (2, 8), "rank"),
        ({}, (2, 3, 4, 5, 8), "rank"),
        ({"causal": True}, (2, 4, 4, 8), "causal"),
        ({"scope_size": None}, (None, None, None, 8), "static spatial size"),
        ({}, (2, 4, 4, 10), "divisible"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        LambdaLayer(**kwargs).build(shape)


@pytest.mark.parametrize(
    "shape,intra_depth,scope_size",
    [
        pytest.param((2, 6, 5, 8), 1, 3, id="image-u1"),
        pytest.param((2, 5, 6, 8), 2, 3, id="image-u2"),
        pytest.param((2, 4, 5, 8), 2, None, id="image-global"),
        pytest.param((2, 9, 8), 2, 3, id="sequence-u2"),
    ],
)
def test_implementations_have_the_same_gradients(shape, intra_depth, scope_size):
    """Training calls: the gradients of every implementation w.r.t. the input and every
    weight match the einsum's (the convolution's are written by hand)."""
    layer = LambdaLayer(
        key_dim=4, num_heads=2, intra_depth=intra_depth, scope_size=scope_size, implementation="einsum"
    )
    randomize(layer, shape)
    inputs = random_inputs(shape)
    expected = loss_gradients(layer, inputs)
    for implementation in ("conv", "banded") if len(shape) == 4 else ("conv",):
        layer.implementation = implementation
        actual_gradients = loss_gradients(layer, inputs)
        names = ["inputs"] + [w.path for w in layer.trainable_weights]
        for name, actual, wanted in zip(names, actual_gradients, expected):
            np.testing.assert_allclose(actual, wanted, atol=1e-4, rtol=1e-4, err_msg=f"{implementation}: {name}")


@pytest.mark.parametrize("size", [5, 6, 7])
@pytest.mark.parametrize("pool_size", [2, 3])
def test_average_pooling_same_excludes_padding_on_every_backend(pool_size, size):
    """The ResNet-D shortcut's pool: TensorFlow's 'same' numbers whatever the backend."""
    from lambda_keras.layers import AveragePooling2D

    inputs = random_inputs((2, size, size + 1, 3))
    layer = AveragePooling2D(pool_size, strides=2, padding="same")
    np.testing.assert_allclose(
        to_numpy(layer(inputs)), reference.average_pool_same(inputs, pool_size, 2), atol=1e-6, rtol=0
    )
    assert AveragePooling2D.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize("shape, strides", [((2, 9, 8), 1), ((2, 5, 6, 8), 2), ((2, 6, 7, 8), 1)])
def test_channels_first_equals_channels_last(shape, strides):
    last = LambdaLayer(key_dim=4, num_heads=2, scope_size=3, strides=strides, data_format="channels_last")
    randomize(last, shape)
    first = LambdaLayer.from_config({**last.get_config(), "data_format": "channels_first"})
    first_shape = (shape[0], shape[-1]) + shape[1:-1]
    first.build(first_shape)
    first.set_weights(last.get_weights())
    inputs = random_inputs(shape)
    expected = np.moveaxis(to_numpy(last(inputs)), -1, 1)
    outputs = to_numpy(first(np.moveaxis(inputs, -1, 1)))
    assert outputs.shape == expected.shape == first.compute_output_shape(first_shape)
    np.testing.assert_allclose(outputs, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="data_format"):
        LambdaLayer(data_format="NHWC")
