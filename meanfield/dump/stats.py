"""Statistics of one attention block of a real model, computed by the SHARED diagnostics.

The adapters (:mod:`.vggt`, :mod:`.hf`, :mod:`.timm`) capture, for each attention block, the
query and key tensors exactly as the model's softmax sees them (after its q/k norms and
positional encoding) and the block-input residual stream. They hand them to a
:class:`Recorder`, which converts them to NumPy and calls

* ``meanfield.stats.diagnostics.attention_statistics(Softmax(alpha=scale), q_h[idx], k_h)`` per
  head -- the function the simulations use (docs/theory.md "Diagnostics"): logits
  ``s_ij = scale <q_i, k_j>`` for the fixed query subset ``idx`` over ALL N keys, keys streamed
  in blocks, never an N x N array;
* :func:`head_mean_singular_values` for the head-averaged block ``(1/H) sum_h A_h[idx, :]``,
  built on the same streaming primitives (``solvers.streaming``);
* ``meanfield.stats.diagnostics.token_statistics(x)`` on the block input (rows normalized there).

Nothing here imports torch: tensors are converted with their own ``.numpy()`` methods.
"""

from __future__ import annotations

import functools

import numpy as np

from .format import HEAD_ROWS, TOKEN_STATS


def default_dtype():
    """float64 when 64-bit JAX is enabled (the dump CLI does), else float32 (the library default)."""
    import jax

    return np.float64 if jax.config.jax_enable_x64 else np.float32


def _to_numpy(t, dtype=None) -> np.ndarray:
    """A torch tensor (any dtype, any device) or array -> NumPy ``dtype`` (bf16/fp16 exact in fp32)."""
    dtype = default_dtype() if dtype is None else dtype
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        t = (t if str(t.dtype) == "torch.float64" else t.float()).numpy()
    return np.asarray(t, dtype=dtype)


@functools.cache
def _kernel(scale: float, key_block: int):
    from solvers.kernels import Softmax

    return Softmax(alpha=scale, key_block=key_block)


@functools.cache
def _head_mean_fn(key_block: int, weighted: bool = False):
    """Jitted two-pass head-mean spectrum: pass 1 per-head log-sum-exp, pass 2 the spectral factor of
    the mean rows (``solvers.streaming.factor_update``: Gram matrix in float64, TSQR ``R`` in float32).

    ``weighted``: key masses ``w`` (docs/theory.md "Token masses"): the per-head rows are
    ``A_ij = w_j exp(s_ij) / sum_k w_k exp(s_ik)`` (proportional attention) and the Gram matrix is
    per unit of mass, ``sum_j Abar_ij Abar_i'j / w_j`` for the head mean ``Abar``.
    """
    import jax
    import jax.numpy as jnp

    from solvers.kernels import spectrum_from_factor
    from solvers.streaming import factor_update, fold_key_blocks, logit_pass

    def run(q, k, scale, w=None):
        H, n, dh = q.shape
        lse = jax.vmap(lambda qh, kh: _lse(logit_pass(qh, kh, scale, key_block, with_gram=False, weights=w)))(q, k)
        kflat = jnp.transpose(k, (1, 0, 2)).reshape(k.shape[1], H * dh)

        def body(gram, kblk, ok, wblk=None):
            kb = kblk.reshape(-1, H, dh).transpose(1, 0, 2)  # (H, b, dh)
            s = scale * jnp.einsum("hnd,hbd->hnb", q, kb)
            a = jnp.where(ok[None, None, :], jnp.exp(s - lse[:, :, None]), 0.0).mean(axis=0)  # per unit mass
            return factor_update(gram, (a if wblk is None else a * jnp.sqrt(wblk)[None, :]).T)

        gram = fold_key_blocks(body, kflat, key_block, jnp.zeros((n, n), q.dtype), weights=w)
        return spectrum_from_factor(gram)

    def _lse(p):
        return p.mx + jnp.log(p.l)

    if weighted:
        return jax.jit(run)
    return jax.jit(lambda q, k, scale: run(q, k, scale))


def head_mean_singular_values(q, k, scale: float, *, key_block: int = 1024, weights=None) -> np.ndarray:
    """Singular values (descending) of ``(1/H) sum_h softmax(scale q_h k_h^T)``, an ``n x N`` block.

    ``q`` (H, n, dh) are the query rows of the subset, ``k`` (H, N, dh) all keys. Two streamed
    passes over key blocks: the per-head row normalizers (``solvers.streaming.logit_pass``), then
    the ``n x n`` spectral factor of the head-averaged rows (``solvers.streaming.factor_update``:
    the Gram matrix in float64, the TSQR factor ``R`` in float32). ``weights`` (N,): key masses
    (proportional attention; spectrum per unit of mass, docs/theory.md "Token masses"); ``None``:
    unit masses.
    """
    import jax.numpy as jnp

    q, k = jnp.asarray(q), jnp.asarray(k)
    if weights is None:
        return np.asarray(_head_mean_fn(int(key_block))(q, k, jnp.asarray(scale, q.dtype)))
    w = jnp.asarray(weights, q.dtype)
    return np.asarray(_head_mean_fn(int(key_block), True)(q, k, jnp.asarray(scale, q.dtype), w))


@functools.cache
def _vmapped(kernel, weighted: bool = False):
    """``diagnostics.attention_statistics`` vmapped over heads and jitted (one compile per shape)."""
    import jax

    from meanfield.stats import diagnostics

    if weighted:
        return jax.jit(jax.vmap(lambda qh, kh, w: diagnostics.attention_statistics(kernel, qh, kh, w),
                                in_axes=(0, 0, None)))  # fmt: skip
    return jax.jit(jax.vmap(lambda qh, kh: diagnostics.attention_statistics(kernel, qh, kh)))


def _per_head(kernel, q, k, weights=None) -> list:
    """The shared statistics for every head: one jitted vmapped call, else a plain loop over heads."""
    import jax

    from meanfield.stats import diagnostics

    try:
        res = _vmapped(kernel)(q, k) if weights is None else _vmapped(kernel, True)(q, k, weights)
        out = {name: np.asarray(v) for name, v in res.items()}
        return [{name: v[h] for name, v in out.items()} for h in range(q.shape[0])]
    except (jax.errors.JAXTypeError, TypeError):  # not traceable: call it head by head
        return [diagnostics.attention_statistics(kernel, q[h], k[h], weights) for h in range(q.shape[0])]


def attention_block_statistics(q, k, scale: float, query_indices, *, key_block: int = 1024, dtype=None,
                               weights=None):  # fmt: skip
    """:func:`_block_statistics` with one BLAS thread (see :mod:`meanfield._threads`)."""
    from meanfield._threads import single_threaded_blas

    with single_threaded_blas():
        return _block_statistics(q, k, scale, query_indices, key_block=key_block, dtype=dtype, weights=weights)


def _block_statistics(q, k, scale: float, query_indices, *, key_block: int = 1024, dtype=None, weights=None):
    """All attention statistics of one block from its captured q, k of shape (H, N, dh).

    Returns a dict with per-head ``head_singular_values`` (H, n), ``head_effective_rank``,
    ``head_normalized_entropy`` (H,), per-head rows ``row_entropy``, ``max_weight``,
    ``logit_mean``, ``logit_std`` (H, n), and the head-mean ``mean_singular_values`` (n,),
    ``effective_rank``, ``normalized_entropy`` (scalars). ``weights`` (N,): key masses (ToMe's
    sizes with proportional attention; docs/theory.md "Token masses"), ``None``: unit masses.
    """
    from meanfield.stats import diagnostics

    q, k = _to_numpy(q, dtype), _to_numpy(k, dtype)
    w = None if weights is None else _to_numpy(weights, q.dtype)
    if q.ndim != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must both have shape (heads, N, head_dim), got {q.shape} and {k.shape}")
    idx = np.asarray(query_indices)
    kernel = _kernel(float(scale), int(key_block))
    per_head = _per_head(kernel, q[:, idx], k, w)
    out = {
        "head_singular_values": np.stack([np.asarray(p["singular_values"]) for p in per_head]),
        "head_effective_rank": np.array([float(p["effective_rank"]) for p in per_head]),
        "head_normalized_entropy": np.array([float(p["normalized_entropy"]) for p in per_head]),
    }
    for name in HEAD_ROWS:
        out[name] = np.stack([np.asarray(p[name]) for p in per_head])
    sv = head_mean_singular_values(q[:, idx], k, scale, key_block=key_block, weights=w)
    out["mean_singular_values"] = sv
    out["effective_rank"] = float(diagnostics.effective_rank(sv))
    out["normalized_entropy"] = float(diagnostics.normalized_entropy(sv, len(idx)))
    return out


def token_block_statistics(x, *, dtype=None) -> dict:
    """``meanfield.stats.diagnostics.token_statistics`` of block-input tokens ``x`` (N, C), as floats."""
    from meanfield.stats import diagnostics

    stats = diagnostics.token_statistics(_to_numpy(x, dtype))
    return {name: float(stats[name]) for name in TOKEN_STATS}


class Recorder:
    """Collects per-layer statistics from the adapters' callbacks.

    ``attention(layer, q, k)`` takes q, k of shape (1, H, N, dh) or (H, N, dh);
    ``block_input(layer, x)`` takes (1, N, C) or (N, C). Query rows ``query_indices`` (global
    token indices) are fixed across layers; ``sample_indices`` rows of the block input are kept
    in float16 for the layers in ``sample_layers`` (``None``: all layers).
    """

    def __init__(self, query_indices, scale, *, sample_indices=None, sample_layers=None, key_block=1024,
                 dtype=None):  # fmt: skip
        self.query_indices = np.asarray(query_indices)
        self.scale = float(scale)
        self.sample_indices = None if sample_indices is None else np.asarray(sample_indices)
        self.sample_layers = None if sample_layers is None else {int(s) for s in sample_layers}
        self.key_block = int(key_block)
        self.dtype = default_dtype() if dtype is None else dtype
        self.attn: dict[int, dict] = {}
        self.tokens: dict[int, dict] = {}
        self.samples: dict[int, np.ndarray] = {}
        self.qk_dtype = None
        self.n_tokens = None

    @staticmethod
    def _unbatch(t, ndim):
        if t.ndim == ndim + 1:
            if t.shape[0] != 1:
                raise ValueError(f"dumps take a batch of one sequence/scene, got batch size {t.shape[0]}")
            t = t[0]
        return t

    def attention(self, layer: int, q, k) -> None:
        q, k = self._unbatch(q, 3), self._unbatch(k, 3)
        self.qk_dtype = str(q.dtype).replace("torch.", "")
        self.n_tokens = int(k.shape[1])
        self.attn[int(layer)] = attention_block_statistics(
            q, k, self.scale, self.query_indices, key_block=self.key_block, dtype=self.dtype
        )

    def block_input(self, layer: int, x) -> None:
        x = self._unbatch(x, 2)
        self.tokens[int(layer)] = token_block_statistics(x, dtype=self.dtype)
        if self.sample_indices is not None and (self.sample_layers is None or int(layer) in self.sample_layers):
            rows = x[self.sample_indices] if not hasattr(x, "detach") else x[list(map(int, self.sample_indices))]
            self.samples[int(layer)] = _to_numpy(rows, np.float64).astype(np.float16)  # one rounding

    def layers(self) -> np.ndarray:
        """Layers seen by both callbacks, ascending; ValueError if the two sets differ."""
        if set(self.attn) != set(self.tokens):
            raise ValueError(
                f"attention captured for layers {sorted(self.attn)} but block inputs for {sorted(self.tokens)}"
            )
        if not self.attn:
            raise ValueError("no attention block was captured: did the forward pass reach the hooked modules?")
        return np.array(sorted(self.attn), dtype=np.int64)

    def stacked(self):
        """(layers, attention dict, token dict, sample, sample_layers) with the layer axis first."""
        layers = self.layers()
        attn = {name: np.stack([np.asarray(self.attn[l][name]) for l in layers]) for name in self.attn[layers[0]]}
        tokens = {name: np.array([self.tokens[l][name] for l in layers]) for name in TOKEN_STATS}
        sl = np.array(sorted(self.samples), dtype=np.int64)
        sample = np.stack([self.samples[l] for l in sl]) if len(sl) else None
        return layers, attn, tokens, sample, (sl if len(sl) else None)


def logit_precision(dtype, qk_dtype) -> str:
    """Plain statement of the precision of the recorded logits (JAX may silently use float32)."""
    import jax.numpy as jnp

    used = jnp.asarray(np.zeros(1, dtype)).dtype
    return (
        f"logits scale*<q,k> recomputed in {used} (JAX) from the model's {qk_dtype} q/k; "
        f"the model's own softmax ran on {qk_dtype} q/k"
    )


def build_dump(rec: Recorder, meta: dict, query_indices, frame, position, token_type, token_type_names, *,
               sample_indices=None, input_text=None, input_images=None):  # fmt: skip
    """Assemble a :class:`~meanfield.dump.format.Dump` from a filled recorder and the adapter's metadata."""
    from .format import Dump

    layers, attn, tokens, sample, sample_layers = rec.stacked()
    meta = dict(meta)
    meta.setdefault("logit_precision", logit_precision(rec.dtype, rec.qk_dtype))
    return Dump(
        meta=meta,
        layers=layers,
        query_indices=np.asarray(query_indices),
        query_frame=np.asarray(frame),
        query_position=np.asarray(position),
        query_token_type=np.asarray(token_type, dtype=np.int8),
        token_type_names=list(token_type_names),
        attention=attn,
        tokens=tokens,
        sample=sample,
        sample_layers=sample_layers,
        sample_indices=None if sample is None else np.asarray(sample_indices),
        input_text=input_text,
        input_images=input_images,
    )
