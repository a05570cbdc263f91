"""Token merging inside the DINOv2 ViT: FastVGGT merge -> attend -> unmerge and ToMe, block by block
(docs/merging.md, Experiment 2). Needs torch and transformers (the ``.[dump]`` extra).

:func:`merged_forward` runs a ``transformers.Dinov2Model`` (:func:`.onnx_convert.load_backbone`)
with its own layers -- ``norm1``, the q/k/v/output linears (:func:`.onnx_convert.linears`),
``layer_scale1``, ``norm2``, ``mlp``, ``layer_scale2``, final ``layernorm`` -- and replaces only
the attention product by :func:`.merging_torch.merged_attention`:

* :class:`~meanfield.flow.merged.FastVGGT` -- in **every** block, the attention module's input
  ``norm1(x)`` is the matching metric (FastVGGT merges the tokens its attention receives);
  ``r = round(m P)`` sources are merged into destinations (plain means of q, k, v), the merged
  tokens attend with unit masses, every token receives its representative's output (unmerge),
  so the sequence is whole after every block. The class token is always protected (FastVGGT's
  special tokens); with several frames, the first frame is not merged at all (FastVGGT's
  reference frame). ``protected_fraction`` is the strategy's.
* :class:`~meanfield.flow.merged.ToMe` -- the metric is the block's keys averaged over heads; after
  the attention and before the MLP the residual stream is merged (size-weighted means,
  :func:`.merging_torch.merge_rows`) and the merged tokens are **removed** for the rest of the
  network; the sizes are carried and, with ``proportional=True``, ``log size`` is added to the
  logits. ``round(m P)`` tokens in all, as early as the matching allows
  (:meth:`~meanfield.flow.merged.ToMe.schedule`); the class token is protected.

Frames are independent (DINOv2 attends within a frame): each frame runs its own matching.
With ratio 0 every ``assign`` is the identity and every size 1; the computation is then the
model's own (see ``tests/test_merging_vit.py``). The matching runs on a float32 host copy
(``solvers.merging``). Per block the process CPU time of the matching and of the attention
(merge + attend + unmerge) is recorded.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from jaxtyping import Float

from .merging_torch import fastvggt_assign, merge_rows, merged_attention, tome_assign
from .onnx_convert import linears

N_QUERY = 500
"""Query rows of the final-layer statistics, as the paper's Table 1."""


@dataclasses.dataclass
class MergedRun:
    """Result of :func:`merged_forward`.

    ``hidden`` (S, N', C): final LayerNorm output (``N' = P`` for FastVGGT and no merging, the
    survivors for ToMe). ``sizes`` (S, N'): tokens each final row stands for. ``n_attend``
    (S, L): tokens that attended in each block. ``assign`` [s][l]: the index map of block ``l``
    (None where nothing was merged). ``attention`` {(s, l): (q, k, weights)}: the q, k
    (H, n_l, dh) of the tokens that attended in block ``l`` (merged rows for FastVGGT, survivors
    for ToMe) and their key masses (ToMe's sizes with proportional attention, else None), for the
    layers asked for. ``match_seconds``, ``attention_seconds`` (S, L): process CPU time.
    """

    hidden: torch.Tensor
    sizes: torch.Tensor
    n_attend: np.ndarray
    assign: list
    attention: dict
    match_seconds: np.ndarray
    attention_seconds: np.ndarray
    scale: float
    strategy: dict


STRATEGY_API = ("unmerge", "reference_frame", "proportional", "removed_per_layer", "ratio", "protected", "describe")
"""What :func:`merged_forward` asks of a merging strategy (``meanfield.flow.merged.ToMe``/``FastVGGT``
have them; a dataclass with these is a strategy here too): ``unmerge`` (merge -> attend -> unmerge
in every block, FastVGGT-style, else ToMe-style removal with sizes), ``reference_frame`` (leave the
first of several frames alone), ``proportional``, ``removed_per_layer(P, L)``, ``ratio``,
``protected`` and ``describe()``."""


def _strategy(strategy):
    """The strategy with the class token (row 0) protected; ValueError for anything else."""
    if strategy is None:
        return None
    if not all(hasattr(strategy, a) for a in STRATEGY_API) or not dataclasses.is_dataclass(strategy):
        raise ValueError(f"strategy must be None, ToMe(...) or FastVGGT(...), got {strategy!r}")
    if strategy.ratio is None:
        raise ValueError(f"{type(strategy).__name__} inside the ViT takes ratio= (fraction merged in all), not r=")
    return dataclasses.replace(strategy, protected=tuple(sorted({0, *strategy.protected})))


def _frame(model, x: Float[torch.Tensor, "P C"], strategy, heads, scale, keep, clock):
    """One frame x (P, C) through the encoder; returns (hidden, sizes, per-block records)."""
    blocks = model.encoder.layer
    P, C = x.shape
    fast = strategy if strategy is not None and strategy.unmerge else None  # merge -> attend -> unmerge
    tome = strategy if strategy is not None and not strategy.unmerge else None  # merged tokens removed
    # tokens removed after each block's attention; raises before any work if the ratio cannot be met
    schedule = strategy.removed_per_layer(P, len(blocks)) if strategy is not None else np.zeros(len(blocks), int)
    sizes = torch.ones(P, dtype=x.dtype)
    origin = np.arange(P)  # original row of each surviving row (ToMe compacts the sequence)
    rec = {"assign": [], "n_attend": [], "match": [], "attn": [], "attention": {}}
    for l, blk in enumerate(blocks):
        ql, kl, vl, ol = linears(blk)[:4]
        n = x.shape[0]
        h = blk.norm1(x[None])[0]
        q, k, v = (lin(h).view(n, heads, C // heads).transpose(0, 1) for lin in (ql, kl, vl))
        t0 = clock()
        assign = fastvggt_assign(h, fast) if fast is not None and fast.ratio > 0 else None
        t1 = clock()
        ident = torch.arange(n) if assign is None else assign
        prop = tome is not None and tome.proportional
        out, new = merged_attention(q, k, v, ident, scale=scale, sizes=sizes if tome is not None else None,
                                  proportional=prop, compact=True)
        t2 = clock()
        x = x + blk.layer_scale1(ol(out.transpose(0, 1).reshape(n, C)))
        present = new > 0
        rec["n_attend"].append(int(present.sum()))
        if l in keep:
            if assign is None:
                rec["attention"][l] = (q, k, sizes.clone() if prop else None)
            else:
                one = torch.ones(n, dtype=q.dtype)
                qm, km = (merge_rows(t, assign, one)[0][:, present] for t in (q, k))
                rec["attention"][l] = (qm, km, None)
        match = t1 - t0
        if schedule[l] > 0:  # ToMe: merge the residual stream between attention and MLP
            t3 = clock()
            prot = tuple(np.flatnonzero(np.isin(origin, tome.protected)).tolist())
            assign = tome_assign(k.mean(0), int(schedule[l]), protected=prot)
            match += clock() - t3
            x, sizes = merge_rows(x, assign, sizes)
            alive = sizes > 0
            x, sizes, origin = x[alive], sizes[alive], origin[alive.numpy()]
        rec["assign"].append(assign)
        rec["match"].append(match)
        rec["attn"].append(t2 - t1)
        x = x + blk.layer_scale2(blk.mlp(blk.norm2(x[None])))[0]
    return model.layernorm(x[None])[0], sizes, rec


def merged_forward(model, pixels: Float[torch.Tensor, "S 3 H W"] | Float[np.ndarray, "S 3 H W"], strategy=None, *,
                   keep_layers=(-1,), clock=time.process_time) -> MergedRun:
    """Run ``model`` (a ``Dinov2Model``) on ``pixels`` (S, 3, H, W) with token merging in its blocks.

    ``strategy``: ``None`` (no merging), ``FastVGGT(ratio=m, ...)`` or ``ToMe(ratio=m, ...)``; the
    class token is added to its protected rows. ``keep_layers``: blocks whose attending q/k are kept
    for :func:`merged_statistics` (negative: from the end; ``None``: all). Runs under
    ``torch.no_grad``.
    """
    strategy = _strategy(strategy)
    pixels = torch.as_tensor(pixels)
    pixels = pixels[None] if pixels.ndim == 3 else pixels
    patch = int(model.config.patch_size)
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] % patch or pixels.shape[3] % patch:
        raise ValueError(f"pixels must have shape (S, 3, H, W) with H, W multiples of {patch}, "
                         f"got {tuple(pixels.shape)}")  # fmt: skip
    from .hf import attention_heads

    L = len(model.encoder.layer)
    keep = set(range(L)) if keep_layers is None else {int(l) % L for l in keep_layers}
    heads, _, scale = attention_heads(_attention(model), linears(model.encoder.layer[0])[0], model.config)
    model.eval()
    out = []
    with torch.no_grad():
        emb = model.embeddings(pixels.to(next(model.parameters()).dtype))
        for s in range(emb.shape[0]):
            first = strategy is not None and strategy.reference_frame and s == 0 and emb.shape[0] > 1
            out.append(_frame(model, emb[s], None if first else strategy, heads, scale, keep, clock))
    recs = [r for _, _, r in out]
    return MergedRun(
        hidden=torch.stack([h for h, _, _ in out]),
        sizes=torch.stack([z for _, z, _ in out]),
        n_attend=np.array([r["n_attend"] for r in recs]),
        assign=[r["assign"] for r in recs],
        attention={(s, l): t for s, r in enumerate(recs) for l, t in r["attention"].items()},
        match_seconds=np.array([r["match"] for r in recs]),
        attention_seconds=np.array([r["attn"] for r in recs]),
        scale=float(scale),
        strategy=None if strategy is None else strategy.describe(),
    )


def _attention(model):
    att = model.encoder.layer[0].attention
    return getattr(att, "attention", att)


def query_rows(n_tokens: int, n_query: int = N_QUERY, seed: int = 0) -> np.ndarray:
    """``min(n_query, n_tokens)`` sorted rows among the ``n_tokens`` attending tokens (in sequence
    order), drawn as the dumps draw theirs (``meanfield.stats.diagnostics.query_subset``): with no
    merging they are the dump's rows."""
    from meanfield.stats.diagnostics import query_subset

    return np.asarray(query_subset(int(n_tokens), int(n_query), int(seed)))


def merged_statistics(run: MergedRun, *, layer: int = -1, frame: int = 0, n_query: int = N_QUERY, seed: int = 0,
                      dtype=None, key_block: int = 1024) -> dict:  # fmt: skip
    """Attention statistics of block ``layer`` of ``frame`` on the tokens that attended there.

    The package's one definition (:func:`.stats.attention_block_statistics`, the function the
    dumps use): per head and for the head mean, over ``query_rows(n, n_query, seed)`` against all
    ``n`` attending keys, with ToMe's sizes as key masses under proportional attention
    (docs/theory.md "Token masses"). Adds ``n_tokens`` and ``query_indices``.
    """
    from .stats import attention_block_statistics

    L = run.n_attend.shape[1]
    key = (int(frame), int(layer) % L)
    if key not in run.attention:
        raise ValueError(f"layer {layer} of frame {frame} was not kept: pass keep_layers to merged_forward")
    q, k, w = run.attention[key]
    idx = query_rows(q.shape[1], n_query, seed)
    out = attention_block_statistics(q, k, run.scale, idx, key_block=key_block, dtype=dtype, weights=w)
    return out | {"n_tokens": int(q.shape[1]), "query_indices": idx}


__all__ = ["N_QUERY", "MergedRun", "merged_forward", "merged_statistics", "query_rows"]
