"""Parity with the PyTorch peers, weights copied over (docs/design.md, "Relative offsets and the peers' weights").

lucidrains' ``lambda-networks`` 0.4.0 runs wherever torch does (CI installs the CPU
wheel, torch 2.13.0). timm's ``LambdaLayer`` comes from golden fixtures
(tests/fixtures/timm/layer_*.json, written by tests/fixtures/make_timm_fixtures.py
under the peer venv of requirements-peers.txt): its state dict regenerates with NumPy
from the recorded seed and layout (tests/timm_fixtures.py), and timm's recorded outputs
are compared; timm itself is not needed.
Both peers are compared in eval mode (moving BN statistics), in float32.
"""

import numpy as np
import pytest

import timm_fixtures
from lambda_keras import LambdaLayer

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")

ATOL = 1e-4


def _randomize_torch_module(module, seed: int) -> None:
    """Random weights and BN statistics, so that every copied tensor matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            scale = 1.0 if "pos" in name else 0.3
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        for submodule in module.modules():
            if isinstance(submodule, torch.nn.BatchNorm2d):
                channels = submodule.num_features
                submodule.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
                submodule.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    module.eval()


def _batch_norm_weights(norm) -> list:
    """PyTorch BatchNorm2d -> Keras [gamma, beta, moving_mean, moving_variance]."""
    return [t.detach().numpy() for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var)]


def _conv_1x1_kernel(conv_weight) -> np.ndarray:
    """PyTorch (out, in, 1, 1) -> our dense kernel [in, out]."""
    return conv_weight.detach().numpy()[:, :, 0, 0].T


def _keras_weights(layer: LambdaLayer, named: dict) -> list:
    """Orders named numpy arrays like ``layer.get_weights()``."""
    names = [variable.path.split("/")[-1] for variable in layer.weights]
    norm_names = {"gamma", "beta", "moving_mean", "moving_variance"}
    ordered, norms = [], {"query_norm": iter(named["query_norm"]), "value_norm": iter(named["value_norm"])}
    for variable, name in zip(layer.weights, names):
        if name in norm_names:
            owner = "query_norm" if "query_norm" in variable.path else "value_norm"
            ordered.append(next(norms[owner]))
        else:
            ordered.append(named[name])
    return ordered


def _compare(layer: LambdaLayer, torch_layer, images_nchw: np.ndarray) -> None:
    with torch.no_grad():
        expected = torch_layer(torch.from_numpy(images_nchw)).numpy().transpose(0, 2, 3, 1)
    outputs = np.asarray(layer(images_nchw.transpose(0, 2, 3, 1), training=False))
    np.testing.assert_allclose(outputs, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize(
    "scope_size,intra_depth",
    [(5, 1), (5, 3), (None, 1), (None, 2)],
    ids=["local-u1", "local-u3", "global-u1", "global-u2"],
)
def test_matches_lucidrains_lambda_networks(scope_size, intra_depth):
    lambda_networks = pytest.importorskip("lambda_networks", reason="pip install lambda-networks==0.4.0")
    size, channels, key_dim, heads = 6, 16, 8, 4
    torch_layer = lambda_networks.LambdaLayer(
        channels, dim_k=key_dim, n=size if scope_size is None else None, r=scope_size, heads=heads, dim_u=intra_depth
    )
    _randomize_torch_module(torch_layer, seed=intra_depth)
    local = scope_size is not None
    layer = LambdaLayer(
        key_dim=key_dim, num_heads=heads, intra_depth=intra_depth, scope_size=scope_size,
        use_position_bias=local, norm_epsilon=torch_layer.norm_q.eps,
    )
    layer.build((None, size, size, channels))
    named = {
        "query_kernel": _conv_1x1_kernel(torch_layer.to_q.weight),
        "key_kernel": _conv_1x1_kernel(torch_layer.to_k.weight),
        "value_kernel": _conv_1x1_kernel(torch_layer.to_v.weight),
        "query_norm": _batch_norm_weights(torch_layer.norm_q),
        "value_norm": _batch_norm_weights(torch_layer.norm_v),
    }
    if local:
        # Conv3d weight (k, u, 1, r, r) -> table [r, r, k, u]; its bias -> position_bias.
        named["position_embeddings"] = torch_layer.pos_conv.weight.detach().numpy()[:, :, 0].transpose(2, 3, 0, 1)
        named["position_bias"] = torch_layer.pos_conv.bias.detach().numpy()
    else:
        named["position_embeddings"] = torch_layer.rel_pos_emb.detach().numpy()
    layer.set_weights(_keras_weights(layer, named))
    images = np.random.default_rng(0).normal(size=(2, channels, size, size)).astype("float32")
    for implementation in ("einsum", "conv"):
        layer.implementation = implementation
        _compare(layer, torch_layer, images)


@pytest.mark.parametrize("case", ["layer_local", "layer_global"], ids=["local", "relative"])
def test_matches_timm_lambda_layer(case):
    fixture = timm_fixtures.load(case)
    timm = timm_fixtures.state_dict(fixture)
    images = timm_fixtures.draw_inputs(fixture["inputs"])  # NCHW
    arguments = fixture["timm"]["arguments"]
    channels, height, width = images.shape[1:]
    key_dim, heads, scope_size = arguments["dim_head"], arguments["num_heads"], arguments["r"]
    local = scope_size is not None
    layer = LambdaLayer(
        key_dim=key_dim, num_heads=heads, scope_size=scope_size, use_position_bias=local,
        norm_epsilon=fixture["timm"]["bn_epsilon"],
    )
    layer.build((None, height, width, channels))
    # timm fuses q, k, v into one 1x1 conv, split in that order (docs/design.md).
    qkv = timm["qkv.weight"][:, :, 0, 0].T
    value_dim = channels // heads

    def norm(prefix):
        return [timm[f"{prefix}.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]

    named = {
        "query_kernel": qkv[:, : heads * key_dim],
        "key_kernel": qkv[:, heads * key_dim : heads * key_dim + key_dim],
        "value_kernel": qkv[:, heads * key_dim + key_dim : heads * key_dim + key_dim + value_dim],
        "query_norm": norm("norm_q"),
        "value_norm": norm("norm_v"),
    }
    if local:
        # Conv3d weight (k, 1, r, r, 1) over (H, W, v) -> table [r, r, k, 1].
        named["position_embeddings"] = timm["conv_lambda.weight"][:, :, :, :, 0].transpose(2, 3, 0, 1)
        named["position_bias"] = timm["conv_lambda.bias"]
    else:
        named["position_embeddings"] = timm["pos_emb"][..., None]
    layer.set_weights(_keras_weights(layer, named))
    for implementation in ("einsum", "conv"):
        layer.implementation = implementation
        outputs = np.asarray(layer(images.transpose(0, 2, 3, 1), training=False))
        np.testing.assert_allclose(outputs, timm_fixtures.outputs(fixture).transpose(0, 2, 3, 1), atol=ATOL, rtol=1e-5)
