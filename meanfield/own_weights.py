"""Replay a real encoder's attention with its own per-layer weights (docs/theory.md "Weight ensembles").

The isotropic replay of :mod:`meanfield.compare` moves the dumped layer-0 tokens with
``softmax(alpha <x, y>)``. Here block ``l`` of a BERT-style encoder (MiniLM) is replaced by one
post-LN layer of the :class:`solvers.Bilinear` kernel built from that block's own weights:

    B_h = W_{Q,h}^T W_{K,h},   alpha = r^2 / sqrt(d_head),   V_h = W_{O,h} W_{V,h},   O_h = I,
    theta <- N(theta + sum_h V_h sum_j A^h_ij theta_j)

where ``r`` is the median norm of the dumped layer-0 tokens (the model's tokens are ``r theta``
up to LayerNorm gains; the value path is linear, so ``r`` cancels from it). Left out, and so not
part of the prediction: the attention and output biases, the LayerNorm gains and biases, the MLP
and the per-layer change of ``r``. The statistics are then scored exactly as the isotropic
replay's (``meanfield.compare.explained_fraction``).
"""

from __future__ import annotations

import numpy as np

from solvers import Bilinear


def bert_layer_kernels(model, radius: float, dtype=np.float32) -> list:
    """One :class:`Bilinear` kernel per encoder block of a HF BERT model (see the module doc)."""
    cfg = model.config
    H, d = int(cfg.num_attention_heads), int(cfg.hidden_size)
    dh = d // H
    kernels = []
    for block in model.encoder.layer:
        sa, out = block.attention.self, block.attention.output.dense
        wq, wk, wv = (np.asarray(m.weight.detach().double().numpy()) for m in (sa.query, sa.key, sa.value))
        wo = np.asarray(out.weight.detach().double().numpy())
        B = np.stack([wq[h * dh:(h + 1) * dh].T @ wk[h * dh:(h + 1) * dh] for h in range(H)])
        V = np.stack([wo[:, h * dh:(h + 1) * dh] @ wv[h * dh:(h + 1) * dh] for h in range(H)])
        eye = np.broadcast_to(np.eye(d), (H, d, d))
        kernels.append(Bilinear(radius**2 / np.sqrt(dh), B=B.astype(dtype), V=V.astype(dtype), O=eye.astype(dtype)))
    return kernels


def replay_own_weights(dump, model, curves: dict) -> dict:
    """Flow the dumped layer-0 tokens block by block with each block's own kernel; per statistic the
    predicted curve and the explained fraction of the measured change (as ``compare.replay``)."""
    import jax.numpy as jnp

    from .compare import STATS, explained_fraction, initial_tokens
    from .flow import solve_flow

    x0 = initial_tokens(dump)
    raw = np.asarray(dump.sample[list(np.asarray(dump.sample_layers)).index(int(np.asarray(dump.layers)[0]))])
    radius = float(np.median(np.linalg.norm(raw, axis=1)))
    kernels = bert_layer_kernels(model, radius)
    layers = [int(v) for v in np.asarray(curves["layer"])]
    x = x0.astype(np.float32)
    pred = {name: [] for name, _ in STATS}
    for i, layer in enumerate(range(layers[0], layers[-1] + 1)):
        sol = solve_flow(x, kernel=kernels[layer], method="layer", dt=1.0, layers=1, save_every=1,
                         n_query=len(dump.query_indices), dtype=jnp.float32)
        if layer in layers:
            for name, _ in STATS:
                pred[name].append(float(sol.diagnostics[name][0]))
        x = sol.x
    out = {"radius": radius, "alpha": radius**2 / np.sqrt(model.config.hidden_size // model.config.num_attention_heads)}
    for name, _ in STATS:
        p, m = np.asarray(pred[name]), np.asarray(curves[name], float)
        out[name] = {"predicted": p, "explained": explained_fraction(p, m)}
    return out


__all__ = ["bert_layer_kernels", "replay_own_weights"]
