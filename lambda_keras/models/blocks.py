"""Building blocks of the (Lambda)ResNets: stems, bottlenecks, SE, stochastic depth.

The ResNet side follows the ResNet-RS code that the LambdaResNets are built on
(tensorflow/tpu ``models/official/resnet/resnet_model.py`` and ``resnet_layers.py``,
docs/design.md, marked [RS] below); the lambda side follows Appendix E.1
of the paper. Tensors are ``[batch, height, width, channels]``, or channels-first
when ``keras.config.image_data_format()`` says so (every layer follows it).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from lambda_keras.layers import AveragePooling2D, LambdaLayer, SymmetricMaxPooling2D


# [RS] conv and SE kernels use TF1's ``variance_scaling_initializer()``: scale 1,
# fan-in, truncated normal, which is Keras' VarianceScaling default.
CONV_INITIALIZER = "variance_scaling"


@keras.saving.register_keras_serializable(package="lambda_keras")
class StochasticDepth(keras.layers.Layer):
    """Drops the whole residual branch of an example with probability ``rate``.

    Stochastic depth (Huang et al. 2016), called "drop connect" in the ResNet-RS
    code: while training, each example's branch is kept with probability
    ``1 - rate`` and scaled by ``1 / (1 - rate)``; at inference it is the identity.

    Input and output ``[batch, ...]``, same shape.

    Args:
      rate: drop probability in ``[0, 1)``.
      seed: optional seed of the drop pattern.
      **kwargs: standard layer arguments.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep_prob = 1.0 - self.rate
        # One Bernoulli draw per example, broadcast over all other axes.
        mask_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=inputs.dtype)
        return inputs / keep_prob * ops.floor(keep_prob + noise)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


def channel_axis() -> int:
    """The channel axis of ``keras.config.image_data_format()``."""
    return 1 if keras.config.image_data_format() == "channels_first" else -1


def batch_norm(x, name: str, norm_options: dict, zero_gamma: bool = False):
    """BatchNormalization over the channel axis with ``norm_options`` (``momentum``,
    ``epsilon``, ``synchronized``); ``zero_gamma`` for the last BN of a bottleneck, so
    each residual block starts as the identity (Appendix A)."""
    return layers.BatchNormalization(
        axis=channel_axis(),
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
        **norm_options,
    )(x)


def lambda_layer(x, filters: int, norm_options: dict, name: str, strides: int = 1, **lambda_options):
    """A ``LambdaLayer`` with ``filters`` outputs whose batch norms take ``norm_options``
    (``momentum``, ``epsilon``, ``synchronized``), as the model's others do."""
    return LambdaLayer(
        filters,
        strides=strides,
        norm_momentum=norm_options["momentum"],
        norm_epsilon=norm_options["epsilon"],
        synchronized_batch_norm=norm_options["synchronized"],
        name=name,
        **lambda_options,
    )(x)


def activation_layer(x, activation: str, name: str):
    """``activation`` ("relu" or "silu", ``model_config.ACTIVATIONS``) as a layer named ``name``."""
    if activation == "relu":
        return layers.ReLU(name=name)(x)
    return layers.Activation(activation, name=name)(x)


def conv2d(x, filters: int, kernel_size: int, strides: int, name: str):
    """Bias-free convolution; strided ones pad ``(k - 1) // 2`` on both sides first.

    [RS] ``conv2d_fixed_padding``: a stride-2 'same' convolution in TF pads only at
    the end for even sizes; padding explicitly makes the output independent of
    the input size's parity, as in the reference code and keras.applications.
    """
    if strides > 1 and kernel_size > 1:
        pad = (kernel_size - 1) // 2
        x = layers.ZeroPadding2D(padding=pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=CONV_INITIALIZER,
        name=name,
    )(x)


def resnet_d_stem(x, norm_options: dict):
    """ResNet-RS stem, ``[b, H, W, 3] -> [b, H/4, W/4, 64]`` (docs/design.md, "The LambdaResNet base is ResNet-RS").

    ResNet-D's three 3x3 convolutions (32, 32, 64 channels, the first strided),
    then a strided 3x3 convolution with 64 channels in place of the max pool; each
    followed by BN and ReLU.
    """
    for index, (filters, strides) in enumerate(((32, 2), (32, 1), (64, 1), (64, 2)), start=1):
        x = conv2d(x, filters, 3, strides, name=f"stem_{index}_conv")
        x = batch_norm(x, f"stem_{index}_bn", norm_options)
        x = layers.ReLU(name=f"stem_{index}_relu")(x)
    return x


def vanilla_stem(x, norm_options: dict):
    """ResNet-v1 stem, ``[b, H, W, 3] -> [b, H/4, W/4, 64]``: 7x7/2 conv, BN, ReLU,
    3x3/2 max pool (He et al. 2016; the stem of the paper's Section 5.1 ResNet-50)."""
    x = conv2d(x, 64, 7, 2, name="stem_conv")
    x = batch_norm(x, "stem_bn", norm_options)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.ZeroPadding2D(padding=1, name="stem_pool_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)


def tiered_stem(x, norm_options: dict, activation: str):
    """timm's "tiered" ResNet-T stem, ``[b, H, W, 3] -> [b, H/4, W/4, 64]``.

    Three 3x3 convolutions with 24, 32 and 64 channels (the first strided), each
    followed by BN and ``activation``, then a 3x3 stride-2 max pool over one position
    of ``-inf`` padding on every side, as PyTorch pads it (the stem of timm's
    ``lambda_resnet26t``, ``lambda_resnet26rpt_256`` and ``lambda_resnet50ts``).
    """
    for index, (filters, strides) in enumerate(((24, 2), (32, 1), (64, 1)), start=1):
        x = conv2d(x, filters, 3, strides, name=f"stem_{index}_conv")
        x = batch_norm(x, f"stem_{index}_bn", norm_options)
        x = activation_layer(x, activation, f"stem_{index}_{activation}")
    return SymmetricMaxPooling2D(3, strides=2, padding=1, name="stem_pool")(x)


def squeeze_excitation(x, se_ratio: float, name: str):
    """Squeeze-and-excitation gate, ``[b, h, w, c] -> [b, h, w, c]``.

    [RS] ``squeeze_excitation``: global average pool, 1x1 conv to
    ``max(1, int(c * se_ratio))`` channels with bias, ReLU, 1x1 conv back to ``c``
    with bias, sigmoid, times the input.
    """
    channels = x.shape[channel_axis()]
    squeezed = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    squeezed = layers.Conv2D(
        max(1, int(channels * se_ratio)),
        1,
        activation="relu",
        kernel_initializer=CONV_INITIALIZER,
        name=f"{name}_reduce",
    )(squeezed)
    gate = layers.Conv2D(
        channels, 1, activation="sigmoid", kernel_initializer=CONV_INITIALIZER, name=f"{name}_expand"
    )(squeezed)
    return layers.Multiply(name=f"{name}_excite")([x, gate])


def bottleneck_block(
    x,
    filters: int,
    strides: int,
    name: str,
    *,
    projection: bool,
    resnet_d_shortcut: bool,
    lambda_options: dict | None,
    se_ratio: float,
    stochastic_depth_rate: float,
    norm_options: dict,
    activation: str = "relu",
):
    """ResNet-v1 bottleneck, ``[b, H, W, c] -> [b, H/s, W/s, 4 * filters]``.

    1x1 conv (``filters``) -> BN -> act -> spatial layer -> BN -> act -> 1x1 conv
    (``4 * filters``) -> BN (gamma 0) -> SE -> stochastic depth -> add shortcut ->
    act, where act is ``activation`` (ReLU by default). The spatial layer is a 3x3
    conv with stride ``s``, or, when ``lambda_options`` is given, a
    ``LambdaLayer(filters, **lambda_options)`` whose ``strides=2`` applies an average
    pool with stride 2 after it, the paper's 3x3 ("in place of the strided
    convolution", Appendix E.1) unless ``lambda_options`` sets ``pool_size=2``. Blocks with a lambda layer never
    get SE (Appendix E.1: "We do not use squeeze-and-excitation in the bottleneck
    blocks that employ a lambda layer").

    Args:
      x: input tensor.
      filters: bottleneck width ``w``; the block outputs ``4 w`` channels.
      strides: 1, or 2 in the first block of c3, c4 and c5.
      name: prefix of every layer name, e.g. ``"c4_block3"``.
      projection: whether the shortcut is a projection (first block of a stage).
      resnet_d_shortcut: ResNet-D shortcut, a 2x2 stride-2 average pool before the
        1x1 projection instead of a strided 1x1 conv.
      lambda_options: ``LambdaLayer`` keyword arguments, or None for a 3x3 conv.
      se_ratio: SE squeeze ratio; 0 for no SE.
      stochastic_depth_rate: drop rate of the residual branch; 0 for none.
      norm_options: ``momentum``, ``epsilon`` and ``synchronized`` of every batch
        norm, the lambda layer's included.
      activation: "relu" (the paper's) or "silu" (timm's ``lambda_resnet50ts``).
    """
    shortcut = x
    if projection:
        if resnet_d_shortcut and strides == 2:
            shortcut = AveragePooling2D(
                2, strides=2, padding="same", name=f"{name}_0_pool"
            )(shortcut)
            shortcut = conv2d(shortcut, 4 * filters, 1, 1, name=f"{name}_0_conv")
        else:
            shortcut = conv2d(shortcut, 4 * filters, 1, strides, name=f"{name}_0_conv")
        shortcut = batch_norm(shortcut, f"{name}_0_bn", norm_options)

    x = conv2d(x, filters, 1, 1, name=f"{name}_1_conv")
    x = batch_norm(x, f"{name}_1_bn", norm_options)
    x = activation_layer(x, activation, f"{name}_1_{activation}")

    if lambda_options is None:
        x = conv2d(x, filters, 3, strides, name=f"{name}_2_conv")
    else:
        x = lambda_layer(x, filters, norm_options, f"{name}_lambda", strides, **lambda_options)
    # Appendix E.1: the lambda layer replaces the 3x3 conv
    # only; the BN and ReLU that followed the conv stay.
    x = batch_norm(x, f"{name}_2_bn", norm_options)
    x = activation_layer(x, activation, f"{name}_2_{activation}")

    x = conv2d(x, 4 * filters, 1, 1, name=f"{name}_3_conv")
    x = batch_norm(x, f"{name}_3_bn", norm_options, zero_gamma=True)
    if se_ratio > 0 and lambda_options is None:
        x = squeeze_excitation(x, se_ratio, name=f"{name}_se")
    if stochastic_depth_rate > 0:
        x = StochasticDepth(stochastic_depth_rate, name=f"{name}_drop")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return activation_layer(x, activation, f"{name}_out")
