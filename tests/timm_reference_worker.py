"""Runs timm in a process of its own, under the peer python, and saves weights and outputs.

timm imports torchvision, and torchvision does not import beside the test venv's torch
(nor after TensorFlow, which crashes the interpreter), so the timm parity tests run timm
here, under the peer venv's python (tests/peers.py), and compare in the test process.

    python tests/timm_reference_worker.py layer OUTPUT.npz SCOPE_SIZE|none
    python tests/timm_reference_worker.py models OUTPUT_DIR MODEL [MODEL ...]
    python tests/timm_reference_worker.py transform IMAGE.npy OUTPUT.npz MODEL [MODEL ...]

``layer``: one timm LambdaLayer with random weights; its state dict, inputs and
outputs in one npz. ``models``: for each timm model name, ``OUTPUT_DIR/MODEL/``
gets ``model.safetensors`` (random weights, BN statistics of a random batch) and
``logits.npz`` (``images`` ``[2, 3, 256, 256]`` and timm's eval-mode ``logits``).
``transform``: timm's evaluation transform of each model (its pretrained config) applied
to the uint8 ``[height, width, 3]`` RGB image as a PIL image; the normalised
``[3, size, size]`` result per model in one npz.
"""

import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.layers.lambda_layer import LambdaLayer

HEIGHT, WIDTH, CHANNELS, KEY_DIM, HEADS = 6, 5, 16, 8, 4
IMAGE_SIZE, BATCH = 256, 2


def run_layer(output_path: str, scope_argument: str) -> None:
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


def randomized_model(name: str, seed: int) -> torch.nn.Module:
    """timm's ``name`` with every tensor random and meaningful, in eval mode.

    BN scales and offsets are drawn (the zero-initialised last BN of each block too, so
    every residual branch counts); the position embeddings and the classifier bias
    too. The BN running statistics are then those of one random batch (a cumulative
    average over one training-mode pass), so the eval-mode activations stay of order
    one through the whole network and the logits compare at an absolute tolerance.
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter_name.endswith("pos_emb"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
            elif parameter_name.endswith(("conv_lambda.bias", "head.fc.bias")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.momentum = None  # cumulative average: one pass sets the statistics
                module.reset_running_stats()
        model.train()
        model(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator))
    return model.eval()


def run_models(output_dir: str, names: list[str]) -> None:
    images = np.random.default_rng(5).normal(size=(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32")
    for seed, name in enumerate(names):
        start = time.perf_counter()
        model = randomized_model(name, seed)
        with torch.no_grad():
            logits = model(torch.from_numpy(images)).numpy()
        folder = Path(output_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, folder / "model.safetensors")
        np.savez(folder / "logits.npz", images=images, logits=logits)
        print(f"{name}: {time.perf_counter() - start:.1f} s")


def run_transform(image_path: str, output_path: str, *names: str) -> None:
    image = Image.fromarray(np.load(image_path))
    outputs = {}
    for name in names:
        config = timm.data.resolve_data_config(model=timm.create_model(name, pretrained=False))
        outputs[name] = timm.data.create_transform(**config)(image).numpy()
    np.savez(output_path, **outputs)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    commands = {
        "layer": run_layer,
        "models": lambda output_dir, *names: run_models(output_dir, list(names)),
        "transform": run_transform,
    }
    commands[command](*arguments)
