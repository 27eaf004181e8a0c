"""Runs timm's LambdaLayer in a process of its own and saves its weights and outputs.

TensorFlow imported before torchvision crashes the interpreter on this machine kind
(timm imports torchvision), so the timm parity test runs timm here, in a fresh
process, and compares in the test process.

    python tests/timm_reference_worker.py OUTPUT.npz SCOPE_SIZE|none
"""

import sys

import numpy as np
import torch
from timm.layers.lambda_layer import LambdaLayer

HEIGHT, WIDTH, CHANNELS, KEY_DIM, HEADS = 6, 5, 16, 8, 4


def main(output_path: str, scope_argument: str) -> None:
    scope_size = None if scope_argument == "none" else int(scope_argument)
    layer = LambdaLayer(
        CHANNELS, feat_size=(HEIGHT, WIDTH) if scope_size is None else None, num_heads=HEADS,
        dim_head=KEY_DIM, r=scope_size,
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            scale = 1.0 if "pos" in name else 0.3
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        for norm in (layer.norm_q, layer.norm_v):
            norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)
            norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    layer.eval()
    images = torch.from_numpy(np.random.default_rng(1).normal(size=(2, CHANNELS, HEIGHT, WIDTH)).astype("float32"))
    with torch.no_grad():
        outputs = layer(images)
    arrays = {name: tensor.numpy() for name, tensor in layer.state_dict().items() if tensor.dtype.is_floating_point}
    np.savez(output_path, images=images.numpy(), outputs=outputs.numpy(), epsilon=layer.norm_q.eps, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])
