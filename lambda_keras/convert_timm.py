"""Converts a timm lambda ResNet checkpoint into Keras weights for the timm family.

    python -m lambda_keras.convert_timm CHECKPOINT --model lambda_resnet50ts --output PATH.weights.h5

CHECKPOINT is timm's state dict: ``model.safetensors`` (read with ``safetensors`` and
NumPy, no PyTorch needed) or a PyTorch ``.pth`` / ``.bin`` file (needs torch). The
model is one of timm's names in ``variants.TIMM_VARIANTS`` (``lambda_resnet26t``,
``lambda_resnet26rpt_256``, ``lambda_resnet50ts``); the weights then load with
``LambdaResNet50TS(weights=PATH)``.

Every tensor of the checkpoint maps onto one variable (or, for the fused ``qkv``
projection, three) of the Keras model, and every variable gets one
(docs/design.md, "timm's weights"):

- ``*.conv.weight [out, in, kh, kw]`` -> ``*_conv/kernel [kh, kw, in, out]``;
- BN ``weight, bias, running_mean, running_var`` -> ``gamma, beta, moving_mean,
  moving_variance`` (``post_attn`` -> the ``*_2_bn`` after a lambda layer);
- ``self_attn.qkv.weight [h k + k + v, c, 1, 1]`` -> the lambda layer's
  ``query_kernel [c, h k]``, ``key_kernel [c, k]``, ``value_kernel [c, v]``;
- ``self_attn.norm_q`` / ``norm_v`` -> its ``query_norm`` / ``value_norm``;
- ``self_attn.conv_lambda.weight [k, 1, r, r, 1]`` and ``.bias [k]`` ->
  ``position_embeddings [r, r, k, 1]`` and ``position_bias [k]``;
- ``self_attn.pos_emb [2H-1, 2W-1, k]`` -> ``position_embeddings [2H-1, 2W-1, k, 1]``;
- ``head.fc.weight [classes, 2048]``, ``.bias`` -> ``predictions/kernel [2048, classes]``, ``bias``.

A checkpoint that does not fit the architecture is refused, naming the first missing,
misshapen or unexpected tensor (or, for a truncated safetensors file, the tensor that
is cut off); the CLI then exits with status 2 and a one-line message. The weights file
is written under a temporary name beside the output and renamed into place, so the
output is never half-written.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lambda_keras import cli
from lambda_keras.atomic_files import written_atomically
from lambda_keras.cli import UserError
from lambda_keras.models.variants import TIMM_VARIANTS

# BatchNormalization variable -> PyTorch BatchNorm2d tensor.
BATCH_NORM_TENSORS = {
    "gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var",
}
# Our bottleneck's numbered convs -> timm's block modules.
BLOCK_MODULES = {"0": "shortcut", "1": "conv1_1x1", "2": "conv2_kxk", "3": "conv3_1x1"}
# Buffers timm saves that no Keras variable holds (BN's update counter).
IGNORED_SUFFIXES = (".num_batches_tracked",)
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the architecture."""


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """timm's state dict as float32 NumPy arrays, in the checkpoint's order.

    Raises:
      CheckpointError: an unreadable or truncated file (naming the cut-off tensor), a
        ``.pth`` without torch, or a tensor that is not floating point or not finite.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"No checkpoint file at {path!r}.")
    if path.endswith(".safetensors"):
        tensors = _read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        tensors = _read_torch(path)
    else:
        raise CheckpointError(f"{path!r} is neither a .safetensors nor a PyTorch .pth/.bin checkpoint.")
    state = {}
    for name, array in tensors.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if array.dtype.type not in FLOAT_DTYPES:
            raise CheckpointError(f"Tensor {name!r} in {path!r} has dtype {array.dtype}, not a float type.")
        if not np.isfinite(array).all():
            raise CheckpointError(f"Tensor {name!r} in {path!r} holds NaN or infinite values: the checkpoint is "
                                  "of a diverged run or damaged.")
        state[name] = np.asarray(array, np.float32)
    return state


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    problem = _safetensors_problem(path)
    if problem:
        raise CheckpointError(f"{path!r} is not a complete safetensors file: {problem}.")
    try:
        return load_file(path)
    except Exception as error:  # the library's own errors, for what the header check cannot see
        raise CheckpointError(f"{path!r} could not be read as safetensors: {error}") from None


def _safetensors_problem(path: str) -> str | None:
    """What is wrong with a safetensors file's layout, naming the first tensor whose
    bytes lie past the end of the file; None when the layout is whole.

    The format: an 8-byte little-endian header length, a JSON header mapping each
    tensor to its ``data_offsets`` within the data that follows.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return f"the file has {size} bytes, fewer than the 8-byte header length"
        header_length = int.from_bytes(prefix, "little")
        if 8 + header_length > size:
            return f"the file ends at byte {size}, inside its {header_length}-byte header"
        try:
            header = json.loads(file.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"its header is not JSON ({error})"
    data_size = size - 8 - header_length
    entries = sorted(
        ((entry["data_offsets"], name) for name, entry in header.items() if name != "__metadata__"),
        key=lambda item: item[0][0],
    )
    for (begin, end), name in entries:
        if end > data_size:
            return (f"tensor {name!r} needs data bytes {begin}-{end} but the file holds {data_size} "
                    "(truncated)")
    return None


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"Reading {path!r} needs PyTorch (pip install torch); or convert timm's model.safetensors, "
            "which needs only safetensors."
        ) from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path!r} could not be read by torch.load: {error}") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]  # timm's training checkpoints wrap the state dict
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path!r} holds a {type(checkpoint).__name__}, not a state dict.")
    return {name: tensor.detach().float().numpy() for name, tensor in checkpoint.items() if torch.is_tensor(tensor)}


# One Keras variable's source: the timm tensor, the shape it must have there, and the
# function that turns it into the variable's value.
Source = tuple[str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _conv_source(prefix: str, shape: tuple[int, ...]) -> Source:
    height, width, inputs, outputs = shape
    return f"{prefix}.weight", (outputs, inputs, height, width), lambda w: w.transpose(2, 3, 1, 0)


def _lambda_sources(prefix: str, layer, variable_name: str, shape: tuple[int, ...]) -> Source:
    """The source of one LambdaLayer variable (``query_kernel``, ``query_norm/gamma``, ...)."""
    if "/" in variable_name:
        norm, statistic = variable_name.split("/")
        module = {"query_norm": "norm_q", "value_norm": "norm_v"}[norm]
        return f"{prefix}.{module}.{BATCH_NORM_TENSORS[statistic]}", shape, lambda w: w
    channels = layer.query_kernel.shape[0]
    widths = [layer.query_kernel.shape[1], layer.key_kernel.shape[1], layer.value_kernel.shape[1]]
    if variable_name in ("query_kernel", "key_kernel", "value_kernel"):
        # timm fuses q, k, v into one 1x1 conv, split in that order.
        index = ("query_kernel", "key_kernel", "value_kernel").index(variable_name)
        begin = sum(widths[:index])
        end = begin + widths[index]
        return f"{prefix}.qkv.weight", (sum(widths), channels, 1, 1), lambda w: w[begin:end, :, 0, 0].T
    if variable_name == "position_bias":
        return f"{prefix}.conv_lambda.bias", shape, lambda w: w
    if variable_name == "position_embeddings" and layer.scope_size is not None:
        # Conv3d weight [k, 1, r, r, 1] over (H, W, v) -> table [r, r, k, 1].
        rows, columns, key_dim, _ = shape
        return (f"{prefix}.conv_lambda.weight", (key_dim, 1, rows, columns, 1),
                lambda w: w[:, :, :, :, 0].transpose(2, 3, 0, 1))
    if variable_name == "position_embeddings":
        return f"{prefix}.pos_emb", shape[:3], lambda w: w[..., None]
    raise CheckpointError(f"No timm tensor is known for the lambda layer variable {variable_name!r}.")


def variable_sources(model) -> list[tuple[Any, Source]]:
    """Every variable of a timm-family model with its source in timm's state dict, in
    the model's layer order."""
    from lambda_keras.layers import LambdaLayer

    layer_names = {layer.name for layer in model.layers}
    sources = []
    for layer in model.layers:
        for variable in layer.weights:
            name = variable.path.split("/", 1)[1] if variable.path.startswith(layer.name + "/") else variable.name
            shape = tuple(variable.shape)
            parts = layer.name.split("_")
            if isinstance(layer, LambdaLayer):
                stage, block = int(parts[0][1:]) - 2, int(parts[1][len("block"):]) - 1
                source = _lambda_sources(f"stages.{stage}.{block}.self_attn", layer, name, shape)
            elif layer.name == "predictions":
                source = ("head.fc.weight", shape[::-1], lambda w: w.T) if name == "kernel" else (
                    "head.fc.bias", shape, lambda w: w)
            elif parts[0] == "stem":
                source = _layer_source(f"stem.conv{parts[1]}", parts[2], name, shape)
            elif parts[0][0] == "c" and parts[1].startswith("block"):
                stage, block = int(parts[0][1:]) - 2, int(parts[1][len("block"):]) - 1
                module = f"stages.{stage}.{block}.{BLOCK_MODULES[parts[2]]}"
                if parts[2] == "2" and parts[3] == "bn" and f"{parts[0]}_{parts[1]}_lambda" in layer_names:
                    # After a lambda layer, timm's BN + activation is a module of its own.
                    source = (f"stages.{stage}.{block}.post_attn.{BATCH_NORM_TENSORS[name]}", shape, lambda w: w)
                else:
                    source = _layer_source(module, parts[3], name, shape)
            else:
                raise CheckpointError(f"Layer {layer.name!r} has no counterpart in timm's models.")
            sources.append((variable, source))
    return sources


def _layer_source(module: str, kind: str, variable_name: str, shape: tuple[int, ...]) -> Source:
    """A conv (``kind`` "conv") or BN (``kind`` "bn") variable of timm's ConvNormAct ``module``."""
    if kind == "conv":
        return _conv_source(f"{module}.conv", shape)
    return f"{module}.bn.{BATCH_NORM_TENSORS[variable_name]}", shape, lambda w: w


def load_timm_weights(model, state: dict[str, np.ndarray], model_name: str) -> None:
    """Assigns timm's ``state`` to a timm-family ``model``.

    Raises:
      CheckpointError: naming the first tensor (in the model's layer order) that is
        missing or misshapen, or the first one of the checkpoint that no variable takes.
    """
    used = set()
    assignments = []
    for variable, (key, timm_shape, convert) in variable_sources(model):
        if key not in state:
            raise CheckpointError(f"The checkpoint lacks tensor {key!r}, which {model_name} needs: "
                                  f"is it a {model_name} checkpoint?")
        if tuple(state[key].shape) != tuple(timm_shape):
            raise CheckpointError(f"Tensor {key!r} has shape {tuple(state[key].shape)}, but {model_name} needs "
                                  f"{tuple(timm_shape)}: is it a {model_name} checkpoint?")
        used.add(key)
        assignments.append((variable, convert(state[key])))
    extra = [key for key in state if key not in used]
    if extra:
        raise CheckpointError(f"The checkpoint has tensor {extra[0]!r} (and {len(extra) - 1} more) that {model_name} "
                              f"does not have: is it a {model_name} checkpoint?")
    for variable, value in assignments:
        variable.assign(value)


def build_converted_model(state: dict[str, np.ndarray], model_name: str):
    """The Keras model of timm's ``model_name`` holding ``state``; its classes follow
    the checkpoint's classifier."""
    from lambda_keras.models import CONSTRUCTORS

    if model_name not in TIMM_VARIANTS:
        raise CheckpointError(f"--model must be one of {sorted(TIMM_VARIANTS)}, not {model_name!r}.")
    classifier = state.get("head.fc.weight")
    classes = classifier.shape[0] if classifier is not None and classifier.ndim == 2 else 1000
    model = CONSTRUCTORS[TIMM_VARIANTS[model_name].name](classes=classes, classifier_activation=None)
    load_timm_weights(model, state, model_name)
    return model


def write_weights(model, output: str | os.PathLike) -> None:
    """``model.save_weights(output)``, under a temporary name beside it and renamed."""
    output = os.path.abspath(os.fspath(output))
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with written_atomically(output, suffix=".weights.h5") as temporary:
        model.save_weights(temporary, overwrite=True)


def convert(checkpoint: str | os.PathLike, model_name: str, output: str | os.PathLike) -> None:
    """Reads ``checkpoint``, checks it against ``model_name`` and writes ``output``."""
    if not os.fspath(output).endswith(".weights.h5"):
        raise CheckpointError(f"--output must end in .weights.h5 (what Keras loads), not {os.fspath(output)!r}.")
    if model_name not in TIMM_VARIANTS:
        raise CheckpointError(f"--model must be one of {sorted(TIMM_VARIANTS)}, not {model_name!r}.")
    write_weights(build_converted_model(read_state_dict(checkpoint), model_name), output)


@cli.entry_point("python -m lambda_keras.convert_timm")
def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m lambda_keras.convert_timm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint", help="timm's model.safetensors (or a .pth/.bin with torch installed)")
    parser.add_argument("--model", required=True, choices=sorted(TIMM_VARIANTS), help="timm's model name")
    parser.add_argument("--output", required=True, help="the Keras weights file to write, PATH.weights.h5")
    args = parser.parse_args(argv)
    convert(args.checkpoint, args.model, args.output)
    print(f"Wrote {args.output} ({TIMM_VARIANTS[args.model].name}(weights={args.output!r}) loads it).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
