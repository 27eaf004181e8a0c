"""The multi-query lambda layer of LambdaNetworks (Bello, ICLR 2021).

Paper: "LambdaNetworks: Modeling Long-Range Interactions Without Attention",
arXiv 2102.08602. Section and figure numbers below refer to it.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from lambda_keras.layers import kernel_support, relative_positions
from lambda_keras.layers.lambda_convolution import lambda_convolution
from lambda_keras.layers.pooling import average_pool_same
from lambda_keras.models.model_config import (
    LambdaLayerConfig,
    check_norm_epsilon,
    check_norm_momentum,
    check_positive_int,
)

# How "auto" picks: for each platform and for inference or training, the
# implementation for inputs of up to so many positions n = H * W (or L), first match
# wins; a row with a third entry applies only to layers whose scope is at least that
# many positions wide (global scopes included). CPU and GPU crossovers were measured
# by benchmarks/auto_crossovers.py, layer_speed.py and gpu_check.py (docs/benchmarks.md,
# docs/platforms.md, docs/design.md); the TPU one is the paper's (Section 5: einsum up
# to n = 85^2 on TPUv3). The einsum's work grows with n x m whatever the scope, the
# others' with n x r^2, so a small scope hands over to them sooner. A CPU without the
# dilated convolution kernel (TensorFlow with oneDNN off) runs the folded convolution,
# slow there, so the banded product runs further; so does JAX on the CPU, whose XLA
# convolutions with one input channel and an r x r kernel are slower still; GPUs run
# small-channel convolutions slowly too. The banded product's memory grows with the
# width, so past the largest size measured (80x80) and for unknown sizes the
# convolution runs: no tensor of it grows with n x m or with the width.
AUTO_CROSSOVERS = {
    "cpu": {
        "inference": ((12 * 12, "einsum"), (20 * 20, "einsum", 15), (None, "conv")),
        "training": ((16 * 16, "einsum"), (20 * 20, "einsum", 15), (80 * 80, "banded"), (None, "conv")),
    },
    "cpu_without_dilated_convolution": {
        "inference": ((16 * 16, "einsum"), (20 * 20, "einsum", 15), (80 * 80, "banded"), (None, "conv")),
        "training": ((16 * 16, "einsum"), (20 * 20, "einsum", 15), (80 * 80, "banded"), (None, "conv")),
    },
    "cpu_jax": {
        "inference": ((16 * 16, "einsum"), (80 * 80, "banded"), (None, "conv")),
        "training": ((16 * 16, "einsum"), (80 * 80, "banded"), (None, "conv")),
    },
    "gpu": {
        "inference": ((20 * 20, "einsum"), (64 * 64, "banded"), (None, "conv")),
        "training": ((20 * 20, "einsum"), (64 * 64, "banded"), (None, "conv")),
    },
    "tpu": {
        "inference": ((85 * 85, "einsum"), (None, "conv")),
        "training": ((85 * 85, "einsum"), (None, "conv")),
    },
}

# Key logit of a padded (or not yet seen) context position: exp() of it vanishes
# next to any real key, without the NaNs of -inf - (-inf).
_NO_CONTEXT = -1e30


def _rsqrt_clipped(squared_norms):
    """``1 / max(norm, 1e-6)``: an all-zero key (padding) normalises to zero."""
    return ops.rsqrt(ops.maximum(squared_norms, 1e-12))


def _convolution_form() -> str:
    """The lambda convolution form this platform runs fastest: the dilated one where
    its kernel exists, else the folded one; the folded one in a graph traced for an
    export (``kernel_support.builtin_ops_only``)."""
    if kernel_support.builtin_ops_only_active():
        return "folded"
    return "dilated" if kernel_support.has_dilated_transposed_convolution() else "folded"


def _auto_platform() -> str:
    """The ``AUTO_CROSSOVERS`` table of this process's platform."""
    accelerator = kernel_support.accelerator()
    if accelerator == "cpu" and keras.backend.backend() == "jax":
        return "cpu_jax"
    if accelerator == "cpu" and not kernel_support.has_dilated_transposed_convolution():
        return "cpu_without_dilated_convolution"
    return accelerator if accelerator in AUTO_CROSSOVERS else "cpu"


@keras.saving.register_keras_serializable(package="lambda_keras")
class LambdaLayer(keras.layers.Layer):
    """Multi-query lambda layer with content and position lambdas (Figures 3 and 8).

    For every query position ``n`` the layer builds a linear function
    ``lambda_n = lambda^c + lambda^p_n`` (a ``[k, v]`` matrix) from the context and
    applies it to ``h`` queries (Section 3.2):

    - queries ``Q = BN(X W_Q)``, ``[b, n, h, k]``; keys ``K = X W_K``,
      ``[b, m, u, k]``, softmax-normalised over the ``m`` context positions; values
      ``V = BN(X W_V)``, ``[b, m, u, v]`` with ``v = filters / h``.
    - content lambda ``lambda^c = sum_{m,u} softmax(K)[m, u] V[m, u]^T``, ``[b, k, v]``.
    - position lambdas ``lambda^p_n = sum_{m,u} E[n, m, u] V[m, u]^T``,
      ``[b, n, k, v]``, from learned relative position embeddings ``E`` restricted to
      an ``r x r`` scope (the lambda convolution, Section 3.4) or global.
    - output ``y[n, head * v + j] = sum_k Q[n, head, k] lambda_n[k, j]``.

    Initialisation follows Appendix E.1: ``W_Q ~ N(0, 1/sqrt(k d))``,
    ``W_K, W_V ~ N(0, 1/sqrt(d))`` (standard deviations, ``d`` the input channels),
    embeddings ``N(0, 1)``; projections carry no bias. The relative offset is
    ``context - query``, as in lucidrains' ``lambda-networks`` and timm, so their
    weights map over without flipping.

    Input ``[batch, length, channels]`` (sequences) or
    ``[batch, height, width, channels]`` (images); output the same with ``filters``
    channels (and the spatial size halved, rounding up, when ``strides=2``).

    Args:
      filters: output channels ``d``; defaults to the input channels. Must be
        divisible by ``num_heads``.
      key_dim: query/key depth ``|k|`` (paper default 16).
      num_heads: number of queries ``|h|`` per lambda (paper default 4).
      intra_depth: intra-depth ``|u|`` (Appendix B.4, Figure 8; default 1).
      scope_size: odd ``r`` for an ``r x r`` (or ``r``-long) local position scope,
        the paper's default 23; ``None`` for global relative embeddings
        ``[2H-1, 2W-1, k, u]``, which need a static spatial size.
      use_content: compute the content lambda (Table 10 ablation when False).
      use_position: compute the position lambdas (Table 10 ablation when False).
      causal: sequences only; query ``t`` sees context positions ``<= t`` in both
        lambdas (Appendix B.2). The content lambda is then a running, numerically
        stable softmax-weighted cumulative sum.
      strides: 1, or 2 for a ``pool_size`` average pool with stride 2 and
        ``"same"`` padding after the layer, the paper's downsampling (Appendix E.1).
      pool_size: side of that average pool: 3, the paper's (Appendix E.1), or 2,
        timm's (a 2x2 pool with stride 2, whose windows on an even-sized input
        tile it without padding).
      implementation: ``"einsum"`` gathers the embeddings into an ``[n, m, k, u]``
        table masked outside the scope (Figure 3) and contracts it with the queries
        first when that is cheaper (``h (k + v) < k v``); ``"conv"`` computes the position
        lambdas as a convolution of the values with the table (Figure 5) without the
        ``n x m`` table; ``"banded"`` computes the same convolution as banded
        (Toeplitz) matrix products, rows by columns, which trains fastest on CPU at
        mid sizes (images; sequences use the einsum); ``"auto"`` picks by input size,
        by whether the call trains and by the platform (CPU with or without the
        dilated convolution kernel, JAX's CPU, GPU, TPU; ``AUTO_CROSSOVERS``). All give the same numbers
        on every backend and CPU; the convolution computes its dilated form where
        the platform has the kernel and a folded one elsewhere (TensorFlow on a CPU
        without oneDNN).
      use_position_bias: add a ``[k]`` bias to the position lambdas, like the
        ``Conv3d`` bias of lucidrains and timm; for importing their weights only.
      norm_momentum: momentum of the batch norms on queries and values.
      norm_epsilon: epsilon of the batch norms on queries and values.
      key_normalization: how the keys are normalised over the context positions
        ``m``: ``"softmax"`` (the paper's), ``"l2"`` (unit L2 norm per key channel)
        or ``"none"``; the Table 12 ablation.
      query_softmax: also softmax-normalise the queries over the key depth ``k``
        (Table 12, "softmax on keys & softmax on queries").
      use_batch_norm: batch norm on queries and values; False is Table 12's "no batch
        normalization on queries and values".
      synchronized_batch_norm: compute those batch norms' statistics over the global
        batch under a TensorFlow distribution strategy (``BatchNormalization``'s
        ``synchronized``).
      data_format: ``"channels_last"`` (``[batch, *spatial, channels]``) or
        ``"channels_first"`` (``[batch, channels, *spatial]``, computed channels-last
        between two transposes); defaults to ``keras.config.image_data_format()``.
      **kwargs: standard layer arguments (``name``, ``dtype``, ``trainable``).

    Under a mixed precision policy the projections run in the compute dtype and
    everything after them (softmax, lambdas, outputs) in float32; the output is cast
    back to the compute dtype.

    A Keras mask ``[batch, length]`` (or ``[batch, height, width]``) removes padded
    context positions from the softmax and from both lambdas.
    """

    def __init__(
        self,
        filters: int | None = None,
        key_dim: int = 16,
        num_heads: int = 4,
        intra_depth: int = 1,
        scope_size: int | None = 23,
        use_content: bool = True,
        use_position: bool = True,
        causal: bool = False,
        strides: int = 1,
        pool_size: int = 3,
        implementation: str = "auto",
        use_position_bias: bool = False,
        norm_momentum: float = 0.99,
        norm_epsilon: float = 1e-3,
        key_normalization: str = "softmax",
        query_softmax: bool = False,
        use_batch_norm: bool = True,
        synchronized_batch_norm: bool = False,
        data_format: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # The arguments a model sets follow the model config's rules, written once there.
        LambdaLayerConfig(
            key_dim=key_dim,
            num_heads=num_heads,
            intra_depth=intra_depth,
            scope_size=scope_size,
            use_content=use_content,
            use_position=use_position,
            key_normalization=key_normalization,
            query_softmax=query_softmax,
            use_batch_norm=use_batch_norm,
            implementation=implementation,
            pool_size=pool_size,
            use_position_bias=use_position_bias,
        )
        if filters is not None:
            check_positive_int("filters", filters)
            if filters % num_heads:
                raise ValueError(
                    f"`filters` must be divisible by `num_heads`. Received: filters={filters}, "
                    f"num_heads={num_heads}"
                )
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "`data_format` must be 'channels_last' or 'channels_first'. "
                f"Received: data_format={data_format!r}"
            )
        check_norm_momentum(norm_momentum)
        check_norm_epsilon(norm_epsilon)
        self.filters = filters
        self.key_dim = key_dim
        self.num_heads = num_heads
        self.intra_depth = intra_depth
        self.scope_size = scope_size
        self.use_content = use_content
        self.use_position = use_position
        self.causal = causal
        self.strides = strides
        self.pool_size = pool_size
        self.implementation = implementation
        self.use_position_bias = use_position_bias
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.key_normalization = key_normalization
        self.query_softmax = query_softmax
        self.use_batch_norm = use_batch_norm
        self.synchronized_batch_norm = synchronized_batch_norm
        self.data_format = data_format
        self.supports_masking = True
        self.query_norm = self.value_norm = None
        if use_batch_norm:
            self.query_norm = keras.layers.BatchNormalization(
                momentum=norm_momentum,
                epsilon=norm_epsilon,
                synchronized=synchronized_batch_norm,
                dtype=self.dtype_policy,
                name="query_norm",
            )
            self.value_norm = keras.layers.BatchNormalization(
                momentum=norm_momentum,
                epsilon=norm_epsilon,
                synchronized=synchronized_batch_norm,
                dtype=self.dtype_policy,
                name="value_norm",
            )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        rank = len(input_shape)
        if rank not in (3, 4):
            raise ValueError(
                "LambdaLayer expects inputs of rank 3 [batch, length, channels] or rank 4 "
                f"[batch, height, width, channels]. Received input_shape={input_shape} "
                f"(rank {rank})"
            )
        if self.causal and rank == 4:
            raise ValueError(
                "`causal=True` is defined for sequences [batch, length, channels] only. "
                f"Received input_shape={input_shape}"
            )
        input_shape = self._channels_last_shape(input_shape)
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"The channel dimension of the inputs must be known. Received input_shape={input_shape}"
            )
        self.output_filters = self.filters if self.filters is not None else channels
        if self.output_filters % self.num_heads:
            raise ValueError(
                "`filters` (the input channels when filters=None) must be divisible by "
                f"`num_heads`. Received: filters={self.output_filters}, num_heads={self.num_heads}"
            )
        spatial_shape = tuple(input_shape[1:-1])
        if self.use_position and self.scope_size is None and None in spatial_shape:
            raise ValueError(
                "`scope_size=None` (global position embeddings) needs a static spatial size; "
                f"received input_shape={input_shape}. Give the Input a fixed size or use "
                "an odd local scope_size."
            )
        key_dim, heads, depth = self.key_dim, self.num_heads, self.intra_depth
        self.value_dim = self.output_filters // heads
        # Appendix E.1: fan-in initialisation; the 1/sqrt(k) of scaled dot-product
        # attention is folded into W_Q.
        self.query_kernel = self.add_weight(
            name="query_kernel",
            shape=(channels, heads * key_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(key_dim * channels)),
        )
        if self.use_content:
            self.key_kernel = self.add_weight(
                name="key_kernel",
                shape=(channels, depth * key_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(channels)),
            )
        self.value_kernel = self.add_weight(
            name="value_kernel",
            shape=(channels, depth * self.value_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(channels)),
        )
        if self.use_batch_norm:
            self.query_norm.build(input_shape[:-1] + (heads * key_dim,))
            self.value_norm.build(input_shape[:-1] + (depth * self.value_dim,))
        if self.use_position:
            if self.scope_size is None:
                table_extent = tuple(2 * size - 1 for size in spatial_shape)
            else:
                table_extent = (self.scope_size,) * len(spatial_shape)
            # The table stays float32 under mixed precision: the position lambdas
            # sum |m| products of N(0, 1) embeddings (Section 5 stability notes).
            self.position_embeddings = self.add_weight(
                name="position_embeddings",
                shape=table_extent + (key_dim, depth),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
                autocast=False,
            )
            if self.use_position_bias:
                self.position_bias = self.add_weight(
                    name="position_bias", shape=(key_dim,), initializer="zeros", autocast=False
                )
        self.built = True

    def resolve_implementation(self, positions: int | None, training: bool = False) -> str:
        """The implementation used for inputs with ``positions`` spatial positions
        (``None``: unknown until run time) in a training or an inference call, on
        this platform (``AUTO_CROSSOVERS``)."""
        if self.implementation != "auto":
            return self.implementation
        crossovers = AUTO_CROSSOVERS[_auto_platform()]["training" if training else "inference"]
        return next(
            implementation
            for max_positions, implementation, *min_scope_size in crossovers
            if (max_positions is None or (positions is not None and positions <= max_positions))
            and (not min_scope_size or self.scope_size is None or self.scope_size >= min_scope_size[0])
        )

    def _position_table(self):
        table = ops.cast(self.position_embeddings, "float32")
        if self.causal:
            table = table * relative_positions.causal_table_mask(table.shape[0], table.dtype)
        return table

    def _position_lambdas_banded(self, values, spatial_shape):
        """``[b, n, u, v]`` values -> ``[b, n, k, v]`` position lambdas, images only.

        The lambda convolution as banded matrix products: along the width, the
        ``r``-tap convolution is a product with a ``W x W`` Toeplitz matrix per table
        row and key channel; along the height, each query row reads ``r`` shifted
        rows of the value maps. One large matrix product then replaces the
        small-channel convolution, whose gradients are slow on CPU; the work is
        ``W / r`` times the convolution's, so it suits feature maps up to a few
        times the scope.
        """
        height, width = spatial_shape
        table = self._position_table()  # [T_h, T_w, k, u]
        extent_h, extent_w = table.shape[0], table.shape[1]
        batch = ops.shape(values)[0]
        columns, columns_valid = relative_positions.offset_indices(width, extent_w)
        # toeplitz[a, x, w, u, k] = R[a, w - x + T_w // 2] where that offset is in the table.
        toeplitz = ops.take(ops.swapaxes(table, -1, -2), columns, axis=1) * ops.cast(
            columns_valid, table.dtype)[None, :, :, None, None]
        maps = ops.reshape(values, (batch, height, width, self.intra_depth, self.value_dim))
        half = extent_h // 2
        maps = ops.pad(maps, ((0, 0), (half, half), (0, 0), (0, 0), (0, 0)))
        # value_rows[b, y, a] = the value row at offset a - T_h // 2 from query row y.
        rows = ops.arange(height, dtype="int32")[:, None] + ops.arange(extent_h, dtype="int32")[None, :]
        value_rows = ops.take(maps, rows, axis=1)  # [b, H, T_h, W, u, v]
        # The einsum axwuk,byawuv->byxkv with (w, u) and (b, y) merged by free reshapes:
        # six letters, not eight, for tf2onnx's einsum optimiser, which tries every
        # letter order once per process (8! of them took minutes; docs/design.md).
        toeplitz = ops.reshape(toeplitz, (extent_h, width, -1, self.key_dim))  # [T_h, W, W u, k]
        value_rows = ops.reshape(value_rows, (batch * height, extent_h, -1, self.value_dim))  # [b H, T_h, W u, v]
        lambdas = ops.einsum("axck,nacv->nxkv", toeplitz, value_rows)
        return ops.reshape(lambdas, (batch, -1, self.key_dim, self.value_dim))

    def _content_lambda(self, keys, values):
        """Global content lambda ``sum_{m,u} softmax_m(K) V^T``, ``[b, k, v]``.

        The softmax over the context axis ``m`` is written out, and its normaliser
        divides the ``[b, u, k, v]`` sums rather than the ``[b, m, u, k]`` keys: a
        softmax over a non-minor axis transposes the keys first, and a broadcast
        division of the keys costs more than the whole content lambda
        (docs/design.md, "Measured choices in the layer").
        """
        if self.key_normalization == "none":
            return ops.einsum("bmuk,bmuv->bkv", keys, values)
        if self.key_normalization == "l2":
            squared_norms = ops.sum(ops.square(keys), axis=1)  # [b, u, k]
            sums = ops.einsum("bmuk,bmuv->bukv", keys, values)
            return ops.sum(sums * ops.expand_dims(_rsqrt_clipped(squared_norms), -1), axis=1)
        weights = ops.exp(keys - ops.max(keys, axis=1, keepdims=True))  # [b, m, u, k]
        sums = ops.einsum("bmuk,bmuv->bukv", weights, values)
        return ops.sum(sums / ops.expand_dims(ops.sum(weights, axis=1), -1), axis=1)

    def _causal_content_lambdas(self, keys, values, mask):
        """Per-query content lambdas over context positions ``<= n``, ``[b, n, k, v]``.

        Appendix B.2 masks the context with a cumulative sum. A plain cumulative sum
        of ``exp(K) V^T`` overflows (or, after subtracting a global maximum,
        underflows) for large keys, so the sum carries its running maximum like an
        online softmax: an inclusive prefix scan (Hillis-Steele, log2(n) steps) over
        ``(running max, sum of exp, sum of exp * V)``.

        Without the softmax (Table 12's L2 and no key normalisation) the prefix sums
        are plain cumulative sums, divided by the running key norm for L2.
        """
        if self.key_normalization != "softmax":
            prefix_sums = ops.cumsum(ops.expand_dims(keys, -1) * ops.expand_dims(values, 3), axis=1)  # [b, n, u, k, v]
            if self.key_normalization == "l2":
                prefix_norms = _rsqrt_clipped(ops.cumsum(ops.square(keys), axis=1))
                prefix_sums = prefix_sums * ops.expand_dims(prefix_norms, -1)
            return ops.sum(prefix_sums, axis=2)
        present = ops.ones_like(keys) if mask is None else ops.expand_dims(ops.cast(mask, keys.dtype), (2, 3))
        present = ops.broadcast_to(present, ops.shape(keys))
        state = (keys, present, ops.expand_dims(present, -1) * ops.expand_dims(values, 3))  # [b, n, u, k(, v)]
        length = keys.shape[1] if keys.shape[1] is not None else ops.shape(keys)[1]
        positions = ops.arange(length, dtype="int32")

        def scan_step(offset, state):
            # Combine every element with the partial result `offset` positions earlier.
            earlier_positions = ops.maximum(positions - offset, 0)
            has_earlier = ops.reshape(positions >= offset, (1, -1, 1, 1))
            running_max, exp_sums, weighted_sums = state
            earlier_max = ops.where(
                has_earlier, ops.take(running_max, earlier_positions, axis=1), _NO_CONTEXT
            )
            earlier_sums = ops.take(exp_sums, earlier_positions, axis=1)
            earlier_weighted = ops.take(weighted_sums, earlier_positions, axis=1)
            new_max = ops.maximum(running_max, earlier_max)
            earlier_scale = ops.exp(earlier_max - new_max)
            scale = ops.exp(running_max - new_max)
            return (
                new_max,
                exp_sums * scale + earlier_sums * earlier_scale,
                weighted_sums * ops.expand_dims(scale, -1) + earlier_weighted * ops.expand_dims(earlier_scale, -1),
            )

        if isinstance(length, int):  # static length: unrolled, XLA-friendly
            offset = 1
            while offset < length:
                state = scan_step(offset, state)
                offset *= 2
        else:
            _, state = ops.while_loop(
                lambda offset, _: offset < length,
                lambda offset, state: (offset * 2, scan_step(offset, state)),
                (ops.convert_to_tensor(1, "int32"), state),
            )
        _, exp_sums, weighted_sums = state
        # Queries whose whole prefix is padding have no context: their lambda is 0.
        exp_sums = ops.maximum(exp_sums, ops.cast(1e-30, exp_sums.dtype))
        return ops.sum(weighted_sums / ops.expand_dims(exp_sums, -1), axis=2)

    def _project(self, inputs, training):
        """Queries ``[b, n, h*k]``, keys ``[b, n, u*k]`` (None without content) and
        values ``[b, n, u*v]`` in float32, with the batch norms applied.

        Three matmuls rather than one with the concatenated kernels: splitting the
        fused product copies it, which costs more than reading the input three times
        (docs/design.md, "Measured choices in the layer").
        """
        keys = None
        if self.use_content:
            keys = ops.cast(ops.matmul(inputs, self.key_kernel), "float32")
        if not self.use_batch_norm:
            queries = ops.matmul(inputs, self.query_kernel)
            values = ops.matmul(inputs, self.value_kernel)
        elif training and self.query_norm.trainable:  # batch statistics, moving averages updated
            queries = self.query_norm(ops.matmul(inputs, self.query_kernel), training=True)
            values = self.value_norm(ops.matmul(inputs, self.value_kernel), training=True)
        else:
            queries = self._normalized_projection(inputs, self.query_kernel, self.query_norm)
            values = self._normalized_projection(inputs, self.value_kernel, self.value_norm)
        return ops.cast(queries, "float32"), keys, ops.cast(values, "float32")

    def _normalized_projection(self, inputs, kernel, norm):
        """``BN(inputs @ kernel)`` at inference, float32: the batch norm is an affine
        map per channel, folded into the kernel (float32 compute) or applied once
        after the product (mixed precision, rather than rounding the kernel twice)."""
        scale = ops.cast(norm.gamma, "float32") * ops.rsqrt(
            ops.cast(norm.moving_variance, "float32") + norm.epsilon
        )
        shift = ops.cast(norm.beta, "float32") - ops.cast(norm.moving_mean, "float32") * scale
        if self.compute_dtype == "float32":
            return ops.matmul(inputs, kernel * scale) + shift
        return ops.cast(ops.matmul(inputs, kernel), "float32") * scale + shift

    def _position_outputs_einsum(self, queries, values, spatial_shape):
        """``[b, n, h, k]`` queries, ``[b, n, u, v]`` values -> ``[b, n, h, v]``.

        ``y_n = q_n lambda^p_n`` with ``lambda^p_n = sum_m E[n, m] V[m]^T``: the two
        contractions are associative, so the cheaper order runs. Building the
        lambdas costs ``n m u k v``; weighting the context by ``q_n E[n, m]`` first,
        as attention does, costs ``n m u h (k + v)``, less whenever
        ``h (k + v) < k v`` (the paper's k=16, h=4 with v > 5). Its intermediate
        ``[b, n, h, m, u]`` grows with ``m``, so past 8 times the lambdas' size the
        lambdas come first (docs/design.md, "Measured choices in the layer").
        """
        embeddings = relative_positions.gather_relative_embeddings(
            self._position_table(), spatial_shape, causal=self.causal
        )  # [n, m, k, u]
        heads, key_dim, value_dim = self.num_heads, self.key_dim, self.value_dim
        context_positions = embeddings.shape[1]
        lambda_size = key_dim * value_dim
        if heads * (key_dim + value_dim) < lambda_size and (
            context_positions is not None
            and heads * context_positions * self.intra_depth <= 8 * lambda_size
        ):
            position_weights = ops.einsum("bnhk,nmku->bnhmu", queries, embeddings)
            return ops.einsum("bnhmu,bmuv->bnhv", position_weights, values)
        position_lambdas = ops.einsum("nmku,bmuv->bnkv", embeddings, values)
        return ops.einsum("bnhk,bnkv->bnhv", queries, position_lambdas)

    def _channels_last_shape(self, shape) -> tuple:
        shape = tuple(shape)
        if self.data_format == "channels_first":
            return (shape[0],) + shape[2:] + (shape[1],)
        return shape

    def call(self, inputs, training=None, mask=None):
        if self.data_format == "channels_first":
            inputs = ops.moveaxis(inputs, 1, -1)
        input_shape = ops.shape(inputs)
        batch = input_shape[0]
        spatial_shape = tuple(
            static if static is not None else input_shape[axis + 1]
            for axis, static in enumerate(inputs.shape[1:-1])
        )
        static_positions = math.prod(inputs.shape[1:-1]) if None not in inputs.shape[1:-1] else None
        heads, key_dim, depth, value_dim = self.num_heads, self.key_dim, self.intra_depth, self.value_dim

        # Float32 from the projections on: softmax and lambda sums (Section 5, peers' AMP NaNs).
        queries, keys, values = self._project(inputs, training)
        queries = ops.reshape(queries, (batch, -1, heads, key_dim))
        if self.query_softmax:
            queries = ops.softmax(queries, axis=-1)
        values = ops.reshape(values, (batch, -1, depth, value_dim))
        if mask is not None:
            mask = ops.reshape(ops.cast(mask, "bool"), (batch, -1))
            values = values * ops.expand_dims(ops.cast(mask, values.dtype), (2, 3))

        outputs = None
        if self.use_content:
            keys = ops.reshape(keys, (batch, -1, depth, key_dim))
            if mask is not None:
                no_context = _NO_CONTEXT if self.key_normalization == "softmax" else 0.0
                keys = ops.where(ops.expand_dims(mask, (2, 3)), keys, no_context)
            if self.causal:
                content_lambdas = self._causal_content_lambdas(keys, values, mask)
                outputs = ops.einsum("bnhk,bnkv->bnhv", queries, content_lambdas)
            else:
                content_lambda = self._content_lambda(keys, values)
                outputs = ops.einsum("bnhk,bkv->bnhv", queries, content_lambda)
        if self.use_position:
            implementation = self.resolve_implementation(static_positions, training=bool(training))
            if implementation == "conv":
                position_lambdas = lambda_convolution(
                    values, self._position_table(), spatial_shape, _convolution_form()
                )
                position_outputs = ops.einsum("bnhk,bnvk->bnhv", queries, position_lambdas)
            elif implementation == "banded" and len(spatial_shape) == 2:
                position_lambdas = self._position_lambdas_banded(values, spatial_shape)
                position_outputs = ops.einsum("bnhk,bnkv->bnhv", queries, position_lambdas)
            else:  # einsum; for sequences the banded product is the einsum itself
                position_outputs = self._position_outputs_einsum(queries, values, spatial_shape)
            if self.use_position_bias:
                # bias[k] added to every column of lambda^p_n adds q_n . bias to every output.
                position_outputs = position_outputs + ops.expand_dims(
                    ops.einsum("bnhk,k->bnh", queries, self.position_bias), -1
                )
            outputs = position_outputs if outputs is None else outputs + position_outputs

        # Head-major output channels: head * v + j (Figure 3).
        outputs = ops.reshape(outputs, (batch,) + spatial_shape + (heads * value_dim,))
        outputs = ops.cast(outputs, self.compute_dtype)
        if self.strides == 2:
            outputs = average_pool_same(outputs, pool_size=self.pool_size, strides=2)
        if self.data_format == "channels_first":
            outputs = ops.moveaxis(outputs, -1, 1)
        return outputs

    def compute_mask(self, inputs, mask=None):
        if mask is None or self.strides == 1:
            return mask
        # The pooled output position i is centred on (3x3) or starts at (2x2) input position 2 * i.
        return mask[:, ::2] if len(mask.shape) == 2 else mask[:, ::2, ::2]

    def compute_output_shape(self, input_shape):
        input_shape = self._channels_last_shape(input_shape)
        filters = self.filters if self.filters is not None else input_shape[-1]
        spatial = tuple(input_shape[1:-1])
        if self.strides == 2:
            spatial = tuple(None if size is None else (size + 1) // 2 for size in spatial)
        if self.data_format == "channels_first":
            return (input_shape[0], filters) + spatial
        return (input_shape[0],) + spatial + (filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "key_dim": self.key_dim,
                "num_heads": self.num_heads,
                "intra_depth": self.intra_depth,
                "scope_size": self.scope_size,
                "use_content": self.use_content,
                "use_position": self.use_position,
                "causal": self.causal,
                "strides": self.strides,
                "pool_size": self.pool_size,
                "implementation": self.implementation,
                "use_position_bias": self.use_position_bias,
                "norm_momentum": self.norm_momentum,
                "norm_epsilon": self.norm_epsilon,
                "key_normalization": self.key_normalization,
                "query_softmax": self.query_softmax,
                "use_batch_norm": self.use_batch_norm,
                "synchronized_batch_norm": self.synchronized_batch_norm,
                "data_format": self.data_format,
            }
        )
        return config
