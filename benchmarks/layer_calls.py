"""One lambda layer's call, compiled the way its Keras backend compiles best.

Inference calls the layer with ``training=False``; a training call returns the
gradients of ``sum(y**2)`` w.r.t. the input (and the weights under TensorFlow and JAX).
TensorFlow: a ``tf.function`` graph; JAX: ``jax.jit`` of ``stateless_call``; PyTorch:
eager, as Keras runs it.
"""

from __future__ import annotations

import keras


def compiled_call(layer, training: bool):
    """A function of one input tensor that runs ``layer`` forward (or forward+backward)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        # The weights are arguments, as in Keras's own compiled steps, not constants of
        # the compiled function.
        def forward(x, weights, state):
            return layer.stateless_call(weights, state, x, training=False)[0]

        def loss(x, weights, state):
            outputs = layer.stateless_call(weights, state, x, training=True)[0]
            return jnp.sum(outputs * outputs)

        function = jax.jit(forward if not training else jax.grad(loss, argnums=(0, 1)))
        return lambda x: function(x, trainable, non_trainable)
    if backend == "torch":
        import torch

        def call(x):
            if not training:
                with torch.no_grad():
                    return layer(x, training=False)
            x = x.detach().requires_grad_(True)
            outputs = layer(x, training=True)
            torch.sum(outputs * outputs).backward()
            return x.grad

        return call
    import tensorflow as tf

    def call(x):
        if not training:
            return layer(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=True)
            loss = tf.reduce_sum(outputs * outputs)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    return tf.function(call)
