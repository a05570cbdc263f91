"""Weight ensembles (docs/theory.md "Weight ensembles"): the draws' laws and the redrawn flow.

References: the defining moments of each ensemble (GOE: symmetric, off-diagonal variance 1,
diagonal variance 2; Gaussian product G G'/sqrt d: entry variance 1), checked on 400 draws of
d = 6 (Monte-Carlo error ~ 1/sqrt(400 * 36) ~ 1%, tolerance 10%); the isotropic flow for
kq = v = "identity".
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanfield import solve_flow
from meanfield.studies.ensembles import redrawn_flow
from solvers.ensembles import random_weights
import meanfield as mf


def test_ensemble_moments():
    key = jax.random.PRNGKey(0)
    B, _ = random_weights(key, 6, "goe", heads=400, dtype=jnp.float64)
    B = np.asarray(B)
    assert np.max(np.abs(B - np.swapaxes(B, 1, 2))) == 0.0
    off = B[:, ~np.eye(6, dtype=bool)]
    assert abs(off.var() - 1) <= 0.1 and abs(np.einsum("hii->hi", B).var() - 2) <= 0.2
    G, _ = random_weights(key, 6, "gaussian", heads=400, dtype=jnp.float64)
    assert abs(np.asarray(G).var() - 1) <= 0.1
    W, _ = random_weights(key, 6, "wigner", heads=400, dtype=jnp.float64)
    assert abs(np.einsum("hii->hi", np.asarray(W)).var() - 1) <= 0.1  # the "wrong Wigner" diagonal
    B1, Vp = random_weights(key, 6, "goe", "+kq", dtype=jnp.float64)
    assert np.allclose(np.asarray(Vp), np.swapaxes(np.asarray(B1), 1, 2) / np.sqrt(7), rtol=0, atol=1e-15)
    _, Vg = random_weights(key, 6, "identity", "gaussian", heads=3, dtype=jnp.float64)
    assert np.all(np.linalg.eigvalsh(np.asarray(Vg)) >= -1e-12)  # a Gram matrix
    with pytest.raises(ValueError, match="kq"):
        random_weights(key, 6, "cauchy")


def test_identity_ensemble_is_the_isotropic_flow():
    x0 = np.random.default_rng(0).normal(size=(50, 3))
    sol = redrawn_flow(x0, alpha=2.0, kq="identity", v="identity", tau=0.5, t1=1.5, dt=0.1, dtype=jnp.float64)
    ref = solve_flow(x0, kernel=mf.Softmax(2.0), dt=0.1, layers=15, dtype=jnp.float64)
    assert np.max(np.abs(sol.x - ref.x)) <= 1e-12
    assert np.allclose(sol.t, ref.t) and np.max(np.abs(sol.diagnostics["order_parameter"]
                                                       - ref.diagnostics["order_parameter"])) <= 1e-12
    assert sol.params["ensemble"]["periods"] == 3


def test_redraw_changes_the_flow():
    x0 = np.random.default_rng(1).normal(size=(40, 4))
    a = redrawn_flow(x0, kq="goe", v="gaussian", tau=0.5, t1=1.0, dt=0.1, dtype=jnp.float64)
    b = redrawn_flow(x0, kq="goe", v="gaussian", tau=1.0, t1=1.0, dt=0.1, dtype=jnp.float64)
    np.testing.assert_allclose(a.diagnostics["order_parameter"][:6], b.diagnostics["order_parameter"][:6], atol=1e-12)
    assert np.max(np.abs(a.x - b.x)) > 1e-3  # the second period's weights differ
    with pytest.raises(ValueError, match="periods"):
        redrawn_flow(x0, tau=0.3, t1=1.0)


def test_cli_weight_ensemble(tmp_path, capsys):
    """``--weights-kq``: the redrawn-weights flow from the CLI; its options are recorded; bad names exit 2."""
    from meanfield import load_results
    from meanfield.simulate import cli

    out = tmp_path / "ens.h5"
    argv = ["--N", "60", "--d", "4", "--alpha", "1", "--layers", "4", "--tau", "2", "--no-plot", "--no-progress"]
    assert cli(argv + ["--weights-kq", "goe", "--weights-v=-kq", "--out", str(out)]) == 0
    sol = load_results(out)
    assert sol.params["ensemble"]["kq"] == "goe" and sol.params["ensemble"]["periods"] == 2
    assert sol.params["kernel"] == "bilinear" and len(sol.t) == 5
    assert cli(argv + ["--weights-kq", "foo", "--out", str(tmp_path / "bad.h5")]) == 2
    assert "unknown weights_kq 'foo'" in capsys.readouterr().err and not (tmp_path / "bad.h5").exists()


def test_cli_weight_ensemble_checkpoints_and_resumes(tmp_path):
    """``--weights-kq`` is one run over a kernel Schedule, so ``--checkpoint-every``/``--resume``
    work for it as for any run: the resumed file equals the uninterrupted one bit for bit."""
    from meanfield import load_results
    from meanfield.simulate import cli

    argv = ["--N", "60", "--d", "4", "--alpha", "1", "--layers", "6", "--tau", "2", "--weights-kq", "goe",
            "--no-plot", "--no-progress"]
    assert cli(argv + ["--out", str(tmp_path / "a.h5")]) == 0
    assert cli(argv + ["--out", str(tmp_path / "b.h5"), "--checkpoint-every", "3"]) == 0
    assert cli(argv + ["--out", str(tmp_path / "c.h5"), "--resume", str(tmp_path / "b.ckpt.h5")]) == 0
    a, c = load_results(tmp_path / "a.h5"), load_results(tmp_path / "c.h5")
    np.testing.assert_array_equal(a.x, c.x)
    for name, val in a.diagnostics.items():
        np.testing.assert_array_equal(c.diagnostics[name], val, err_msg=name)
