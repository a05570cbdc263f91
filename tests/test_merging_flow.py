"""``solve_flow(..., merging=...)``: real token merging through the driver and the CLI.

Tolerance 1e-12 (float64) where two runs are the same arithmetic up to summation order over a
few steps of O(1) quantities (as in tests/test_weights_flow.py); mass is compared exactly
(integer sizes in float64).
"""

import sys

import numpy as np
import pytest

import meanfield as mf
from meanfield.flow.merged import FastVGGT, ToMe
from meanfield.simulate import cli

TOL = 1e-12
KW = dict(layers=6, dt=0.3, save=mf.SaveAt(n_query=20), dtype="float64")
KERNELS = pytest.mark.parametrize("kernel", [mf.Softmax(2.0), mf.Linear(0.3)], ids=["softmax-2.0", "linear-0.3"])
VARIANTS = [ToMe(ratio=0.0), ToMe(ratio=0.0, proportional=False), FastVGGT(ratio=0.0, protected_fraction=0.1)]


def _x(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@KERNELS
@pytest.mark.parametrize("merging", VARIANTS, ids=lambda s: s.name)
def test_ratio_zero_reproduces_the_unmerged_run(kernel, merging):
    x0 = _x(48, 4, 0)
    a = mf.solve_flow(x0, kernel=kernel, **KW)
    b = mf.solve_flow(x0, kernel=kernel, merging=merging, **KW)
    np.testing.assert_allclose(b.x, a.x, atol=TOL, rtol=0)
    for name in ("order_parameter", "effective_rank", "entropy_rate", "covariance_effective_rank"):
        np.testing.assert_allclose(b.diagnostics[name], a.diagnostics[name], atol=TOL, rtol=0, err_msg=name)
    assert b.params["merging"]["name"] == merging.name and np.all(b.diagnostics["n_tokens"] == 48)


def test_tome_conserves_mass_and_reports_the_weighted_measure():
    sol = mf.solve_flow(_x(64, 3, 1), kernel=mf.Softmax(1.0), merging=ToMe(ratio=0.7), **KW)
    sizes, owner = sol.merging["sizes"], sol.merging["owner"]
    assert sizes.sum() == 64.0 and np.count_nonzero(sizes) == 64 - round(0.7 * 64)
    assert np.all(sizes[owner] > 0) and np.all(np.bincount(owner, minlength=64) == sizes)
    np.testing.assert_array_equal(sol.merging["schedule"][:3], [32, 13, 0])
    m = np.linalg.norm(sizes @ sol.x / sizes.sum())  # |m| of the size-weighted measure, by hand
    np.testing.assert_allclose(sol.diagnostics["order_parameter"][-1], m, atol=1e-14, rtol=0)
    np.testing.assert_array_equal(sol.diagnostics["n_tokens"][[0, 1, 2, -1]], [64, 32, 19, 19])


@KERNELS
def test_merging_identical_tokens_with_proportional_attention_changes_nothing(kernel):
    x0 = _x(31, 4, 2)
    x0[1] = x0[0]  # rows 0 (set A) and 1 (set B) are identical: cosine 1, the best edge
    kw = dict(kernel=kernel, **KW)
    plain = mf.solve_flow(x0, **kw)
    prop = mf.solve_flow(x0, merging=ToMe(r=(1,)), **kw)
    assert prop.merging["owner"][0] == 1 and prop.weights[1] == 2.0 and prop.weights[0] == 0.0
    np.testing.assert_allclose(prop.x[1:], plain.x[1:], atol=TOL, rtol=0)
    np.testing.assert_allclose(prop.x[prop.merging["owner"]], plain.x, atol=TOL, rtol=0)  # unmerged back
    # without proportional attention the pair counts once: the others move differently
    flat = mf.solve_flow(x0, merging=ToMe(r=(1,), proportional=False), **kw)
    assert np.abs(flat.x[2:] - plain.x[2:]).max() > 1e-6


def test_fastvggt_protected_rows_and_float32():
    prot = (0, 1, 2, 3)
    sol = mf.solve_flow(_x(80, 4, 3), kernel=mf.Softmax(1.0), layers=3, dt=0.3, save=mf.SaveAt(n_query=20),
                        dtype="float32", merging=FastVGGT(ratio=0.5, protected=prot, protected_fraction=0.1))
    assert sol.x.dtype == np.float32 and sol.diagnostics["order_parameter"].dtype == np.float32
    assert np.all(sol.diagnostics["n_tokens"] == 40) and sol.x.shape == (80, 4)
    r, dst, mask = FastVGGT(ratio=0.5, protected=prot, protected_fraction=0.1).plan(80)
    # strided rows 0, 10, ..., 70 (FastVGGT: every N // int(N p)-th) plus rows 0..3: 11 rows
    assert mask[list(prot)].all() and mask.sum() == 11 and not (dst & mask).any() and r == 40


BAD = [
    (lambda: ToMe(ratio=1.0), r"ToMe ratio must be a finite number in \[0, 1\), got 1.0"),
    (lambda: ToMe(ratio=-0.1), r"ToMe ratio must be a finite number in \[0, 1\)"),
    (lambda: ToMe(), "give ratio .* or r .*, exactly one"),
    (lambda: FastVGGT(ratio=1.5), r"FastVGGT ratio must be a finite number in \[0, 1\), got 1.5"),
    (lambda: mf.solve_flow(_x(60, 3, 0), layers=2, merging=ToMe(r=31)), "ToMe r = 31 at layer 0 is larger than the "
     "mergeable set: at most 30 tokens"),
    (lambda: mf.solve_flow(_x(60, 3, 0), layers=2, merging=ToMe(ratio=0.9)), "needs more than the run's 2 layers"),
    (lambda: mf.solve_flow(_x(60, 3, 0), layers=2, merging=FastVGGT(ratio=0.5, protected_fraction=1.0)),
     "the protected set covers all 60 tokens"),
    (lambda: mf.solve_flow(_x(60, 3, 0), layers=2, merging=FastVGGT(ratio=0.9, protected_fraction=0.1)),
     "r = 54 tokens, larger than the mergeable set"),
    (lambda: mf.solve_flow(_x(60, 3, 0), layers=2, merging=ToMe(ratio=0.1, protected=(60,))),
     "protected index 60 is out of range for N = 60"),
    (lambda: mf.solve_flow(_x(60, 3, 0), layers=2, method="heun", merging=ToMe(ratio=0.1)),
     "method must be 'layer' or 'euler', got 'heun'"),
    (lambda: mf.solve_flow(_x(60, 3, 0), layers=2, merging="tome"), "merging must be None, ToMe"),
    (lambda: mf.solve_flow(mf.Weighted(_x(60, 3, 0), np.ones(60)), layers=2, merging=FastVGGT(ratio=0.1)),
     "FastVGGT merging does not track masses"),
]


@pytest.mark.parametrize("call,msg", BAD)
def test_bad_input_one_clear_error(call, msg):
    with pytest.raises(ValueError, match=msg) as e:
        call()
    assert "\n" not in str(e.value)


def test_cli_merging(tmp_path, capsys):
    out = tmp_path / "m.h5"
    argv = ["--N", "200", "--layers", "4", "--kernel", "softmax", "--alpha", "1", "--merging", "tome-prop",
            "--merge-ratio", "0.5", "--no-progress", "--no-plot", "--out", str(out)]
    assert cli(argv) == 0 and out.exists()
    assert "tokens" in capsys.readouterr().out.splitlines()[0]
    with pytest.raises(SystemExit) as e:
        sys.exit(cli(argv[:-1] + [str(tmp_path / "n.h5")] + ["--merge-ratio", "1"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "merge-ratio must be a finite number in [0, 1)" in err


def test_study_helpers_compact_the_merged_tokens():
    from meanfield.studies.merge_study import collapse_times, merged_tokens

    x = _x(100, 4, 4)
    for strat, n_left, mass in ((ToMe(ratio=0.7), 30, 100.0), (FastVGGT(ratio=0.7), 30, 30.0)):
        xm, w, seconds = merged_tokens(strat, x, repeats=1)
        assert xm.shape == (n_left, 4) and float(w.sum()) == mass and seconds >= 0
        np.testing.assert_allclose(np.linalg.norm(xm, axis=1), 1.0, atol=1e-15)
    sol = mf.solve_flow(x, kernel=mf.Softmax(1.0), layers=30, dt=1.0, save=mf.SaveAt(n_query=20), dtype="float64")
    tau = collapse_times(sol)
    i = int(np.argmax(sol.diagnostics["order_parameter"] >= 0.99))
    assert sol.t[i - 1] <= tau["order"] <= sol.t[i] and 0 < tau["rank"] < tau["order"]


def test_torch_merged_attention_against_dense_numpy():
    torch = pytest.importorskip("torch")
    from meanfield.dump.merging_torch import fastvggt_assign, merged_attention, tome_assign

    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(40, 6)) for _ in range(3))
    strat = FastVGGT(ratio=0.5, protected=(0, 1))
    assign = fastvggt_assign(torch.as_tensor(k), strat).numpy()
    assert assign[0] == 0 and assign[1] == 1 and np.sum(assign != np.arange(40)) == 20
    out, new = merged_attention(*(torch.as_tensor(a) for a in (q, k, v)), torch.as_tensor(assign), scale=0.4)
    # dense reference: plain means per representative, softmax over the survivors, unmerge
    keep = np.flatnonzero(np.bincount(assign, minlength=40) > 0)
    mean = {j: np.flatnonzero(assign == j) for j in keep}
    qm, km, vm = (np.array([a[mean[j]].mean(0) for j in keep]) for a in (q, k, v))
    logit = 0.4 * qm @ km.T
    p = np.exp(logit - logit.max(1, keepdims=True))
    y = (p / p.sum(1, keepdims=True)) @ vm
    ref = y[np.searchsorted(keep, assign)]
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-13, rtol=0)
    assert float(new.sum()) == 40.0
    a2 = tome_assign(torch.as_tensor(k), 10)
    assert int((a2 != torch.arange(40)).sum()) == 10
