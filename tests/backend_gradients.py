"""Gradients of a Keras layer's training call under whichever backend runs the tests.

Keras 3 has no backend-neutral gradient API, so each backend's own is used:
``tf.GradientTape``, ``jax.grad`` over ``stateless_call``, and torch autograd.
"""

from __future__ import annotations

import keras
import numpy as np


def loss_gradients(layer, inputs: np.ndarray) -> list[np.ndarray]:
    """``d/d[inputs, *trainable weights]`` of ``sum(y * sin(y))``, ``y = layer(inputs, training=True)``.

    Returns NumPy arrays: the input gradient first, then one per trainable weight in
    ``layer.trainable_weights`` order.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(inputs)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=True)
            loss = tf.reduce_sum(outputs * tf.sin(outputs))
        gradients = tape.gradient(loss, [x] + layer.trainable_weights)
        return [np.asarray(tf.convert_to_tensor(g)) for g in gradients]  # gathers give IndexedSlices
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(x, trainable):
            outputs, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
            return jnp.sum(outputs * jnp.sin(outputs))

        # Compiled as one program: run eagerly, JAX would compile each of the forward and
        # backward passes' operations on its own, five times the CPU time for the same numbers.
        gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
        input_gradient, weight_gradients = gradient(jnp.asarray(inputs), trainable)
        return [np.asarray(input_gradient)] + [np.asarray(g) for g in weight_gradients]
    if backend == "torch":
        import torch

        x = torch.tensor(inputs, requires_grad=True)
        for variable in layer.trainable_variables:
            variable.value.grad = None
        outputs = layer(x, training=True)
        torch.sum(outputs * torch.sin(outputs)).backward()
        return [x.grad.cpu().numpy()] + [v.value.grad.cpu().numpy() for v in layer.trainable_variables]
    raise NotImplementedError(f"no gradient helper for the {backend!r} backend")
