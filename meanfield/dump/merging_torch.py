"""Token merging inside a torch attention block: the adapter for merging in a real transformer
(docs/merging.md, Experiment 2). Needs torch (the ``.[dump]`` extra).

The matching is computed by the same engine as the flow (``solvers.merging``), on a host copy of
the metric (the block's input tokens for FastVGGT, its keys for ToMe), in float32 (FastVGGT itself
computes it in bfloat16). Its result is the index map ``assign`` (row -> representing row);
everything else is indexing in torch: merge ``q``, ``k``, ``v`` with ``index_add`` (plain mean, or
size-weighted for ToMe), attend over the surviving rows (``+ log size`` on the logits with
proportional attention), unmerge with the gather ``out[..., assign, :]``. Unlike the flow, merged
``q``/``k``/``v`` are **not** put back on the sphere: a real model's projections are not unit
vectors, and ToMe and FastVGGT use the plain means.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from solvers.merging import alternate_split, bipartite_soft_matching, bipartite_soft_matching_sets

from meanfield.flow.merged import FastVGGT, protected_mask


def _host(metric: torch.Tensor):
    return jnp.asarray(metric.detach().to(torch.float32).cpu().numpy())


def tome_assign(metric: torch.Tensor, r: int, sizes: torch.Tensor | None = None, protected=()) -> torch.Tensor:
    """ToMe's ``assign`` (N,) for one round of ``r`` merges among the rows of ``metric`` (N, c)
    with ``sizes > 0`` (removed rows have size 0; ``None``: all rows alive)."""
    n = metric.shape[0]
    alive = np.ones(n, bool) if sizes is None else sizes.detach().cpu().numpy() > 0
    mergeable = alive & ~protected_mask("ToMe", n, tuple(protected))
    if not 0 <= r <= int(mergeable.sum()) // 2:
        raise ValueError(f"ToMe r = {r} is larger than the mergeable set: at most {int(mergeable.sum()) // 2} tokens")
    src, dst = alternate_split(jnp.asarray(mergeable))
    m = bipartite_soft_matching(_host(metric), src, dst, r)
    return torch.as_tensor(np.array(m.assign), dtype=torch.long, device=metric.device)


def fastvggt_assign(metric: torch.Tensor, strategy: FastVGGT) -> torch.Tensor:
    """FastVGGT's ``assign`` (N,) for ``metric`` (N, c) under ``strategy`` (ratio, protected rows)."""
    r, dst, prot = strategy.plan(metric.shape[0])
    m = bipartite_soft_matching_sets(_host(metric), jnp.asarray(np.flatnonzero(~dst & ~prot)),
                                     jnp.asarray(np.flatnonzero(dst)), r)
    return torch.as_tensor(np.array(m.assign), dtype=torch.long, device=metric.device)


def merge_rows(t: torch.Tensor, assign: torch.Tensor, sizes: torch.Tensor):
    """Size-weighted mean of the rows of ``t`` (..., N, c) that share a representative:
    ``(merged (..., N, c), new sizes (N,))``; rows merged away keep their values but size 0."""
    acc = torch.zeros_like(t).index_add_(-2, assign, t * sizes[:, None].to(t.dtype))
    new = torch.zeros_like(sizes).index_add_(0, assign, sizes)
    merged = acc / new.clamp_min(torch.finfo(new.dtype).tiny)[:, None].to(t.dtype)
    return torch.where((new > 0)[:, None], merged, t), new


def merged_attention(q, k, v, assign, *, scale: float, sizes=None, proportional: bool = False, compact: bool = False):
    """Merge -> attend -> unmerge for ``q``, ``k``, ``v`` (..., N, c): every row receives the output
    of its representative. ``sizes`` (N,) default ones; ``proportional`` adds ``log size``.
    ``compact``: attend over an array of the ``N'`` surviving rows only (``N' x N'`` logits, the
    cost a real merge saves) instead of all ``N`` rows with the merged-away keys masked."""
    sizes = torch.ones(q.shape[-2], dtype=q.dtype, device=q.device) if sizes is None else sizes
    qm, new = merge_rows(q, assign, sizes)
    km, _ = merge_rows(k, assign, sizes)
    vm, _ = merge_rows(v, assign, sizes)
    present = new > 0
    if compact:
        keep = torch.nonzero(present).squeeze(1)
        slot = torch.cumsum(present.to(torch.long), 0) - 1  # row -> its place among the survivors
        w = new[keep]
        bias = w.log() if proportional else torch.zeros_like(w)
        att = torch.softmax(scale * qm[..., keep, :] @ km[..., keep, :].transpose(-1, -2) + bias.to(q.dtype), dim=-1)
        return (att @ vm[..., keep, :])[..., slot[assign], :], new
    bias = torch.where(present, new.clamp_min(torch.finfo(new.dtype).tiny).log() if proportional
                       else torch.zeros_like(new), torch.full_like(new, -torch.inf))
    att = torch.softmax(scale * qm @ km.transpose(-1, -2) + bias.to(q.dtype), dim=-1)
    return (att @ vm)[..., assign, :], new


__all__ = ["fastvggt_assign", "merge_rows", "merged_attention", "tome_assign"]
