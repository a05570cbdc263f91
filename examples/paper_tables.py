"""Fit the paper's Tables 1 and 2 with the laws it proposes, and check what the tables contain.

Reproduces (and tests) Li, Luo, Shi, Gu, arXiv:2512.21691, §5:
- Table 1: normalized attention entropy and effective rank vs fusion strength m.  We fit Eq. 13 at
  fixed depth, ``H = H0 - kappa (1 - m)``, to the measured entropy; we show that the paper's
  "Theory" entropy column is exactly a straight line in m (residuals at the printed rounding) and
  that every row satisfies ``r_eff = 500 ** H_norm`` (so the rank columns carry no information
  beyond the entropy columns); we fit the rank law at fixed depth ``r + C exp(-a (1 - m))``.
- Table 2: relative runtime vs m against Eq. 11's ``c (1 - m)^2``, against ``a + b (1 - m)^2``
  (a term merging does not shrink) and against ``c (1 - m)^p``.

Runtime: about 20-40 s on one CPU core (mostly JAX compilation of the fits).

Run:   python examples/paper_tables.py --out DIR    (writes paper_tables.png)
Smoke: python examples/paper_tables.py --smoke      (the same: the tables are small)
"""

import _common

args, out = _common.parse(__doc__, outputs=["paper_tables.png"])

import numpy as np  # noqa: E402

from meanfield import fit  # noqa: E402
from meanfield.stats import paper
from meanfield.stats.theory import effective_rank_from_normalized_entropy, relative_attention_cost  # noqa: E402

# ---------------------------------------------------------------- Parameters
N_QUERY = 500  # the spectrum size that makes Table 1's two columns agree (docs/theory.md "Diagnostics")

# ---------------------------------------------------------------- Setup
t1, t2 = paper.paper_table(1), paper.paper_table(2)
print(f"data: {paper.PAPER_CITATION}, Tables 1 and 2 (meanfield/data/)")

# ---------------------------------------------------------------- Solve
_common.progress("fitting Table 1 (entropy, rank) and Table 2 (runtime)")
H_exp = fit.fit_entropy_curve(t1["m"], t1["entropy_exp"], variable="fusion")
H_th = fit.fit_entropy_curve(t1["m"], t1["entropy_theory"], variable="fusion", compare=False)
R_exp = fit.fit_rank_vs_fusion(t1["m"], t1["rank_exp"])
cost = fit.fit_cost_curve(t2["m"], t2["relative_runtime"])

# ---------------------------------------------------------------- Analysis
print("\n== Table 1: normalized entropy (Exp.) vs m, Eq. 13 at fixed depth ==")
print(H_exp)
print("\n== Table 1: the paper's 'Theory' entropy column, same straight-line fit ==")
print(H_th)
print(f"max |residual| = {np.max(np.abs(H_th.residuals)):.2g} (printed values have 4 decimals, "
      f"rounding error <= 5e-5): the Theory column is a straight line in m")
gap = np.max(np.abs(H_exp.predict(t1["m"]) - t1["entropy_theory"]))
verdict = "is" if gap <= 1.5e-4 else "is NOT"
print(f"least-squares line through the Exp. column vs the paper's Theory column: max |difference| "
      f"= {gap:.1e}: the Theory column {verdict} the straight-line fit of the Exp. column")

for col in ("exp", "theory"):
    pred = effective_rank_from_normalized_entropy(t1[f"entropy_{col}"], N_QUERY)
    dev = np.max(np.abs(pred / t1[f"rank_{col}"] - 1))
    # rounding H to 4 decimals (<= 5e-5) moves n^H by log(n) 5e-5 relatively; rank to 2 decimals
    allowed = np.log(N_QUERY) * 5e-5 + 0.005 / np.min(t1[f"rank_{col}"])
    print(f"r_eff = {N_QUERY}^H_norm, {col:>6} columns: max relative deviation {dev:.2e} "
          f"(printed rounding allows {allowed:.1e})")

print("\n== Table 1: effective rank (Exp.) vs m, rank law at fixed depth ==")
print(R_exp)

print("\n== Table 2: relative runtime vs m ==")
print(cost)
power = fit.fit_curve("cost_power", t2["m"], t2["relative_runtime"])
lo, hi = power.intervals["p"]
print(f"free exponent: runtime ~ (1-m)^p with p = {power.estimates['p']:.2f} [{lo:.2f}, {hi:.2f}] "
      f"(Eq. 11 says 2)")
print("Eq. 11 with no free constant, (1-m)^2: "
      + ", ".join(f"{v:.2f}" for v in relative_attention_cost(t2["m"]))
      + "  vs measured " + ", ".join(f"{v:.2f}" for v in t2["relative_runtime"]))

# ---------------------------------------------------------------- Plot
_common.progress("plotting")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

grid = np.linspace(0.0, 0.95, 200)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, res, y, ylab, extra in (
        (axes[0], H_exp, t1["entropy_exp"], "normalized entropy", t1["entropy_theory"]),
        (axes[1], R_exp, t1["rank_exp"], "effective rank", t1["rank_theory"]),
        (axes[2], cost, t2["relative_runtime"], "relative runtime", None)):
    g = grid if res is not R_exp and res is not H_exp else grid[grid >= 0.05]
    ax.plot(res.x, y, "ko", label="paper, measured")
    if extra is not None:
        ax.plot(t1["m"], extra, "s", mfc="none", color="C3", label="paper, 'Theory'")
    ax.plot(g, res.predict(g), "C0-", label=res.model.formula)
    if np.all(np.isfinite(res.cov_u)):
        lo, hi = res.band(g)
        ax.fill_between(g, lo, hi, color="C0", alpha=0.25, label="95% band")
    ax.set_xlabel("fusion strength m")
    ax.set_ylabel(ylab)
R_line = fit.fit_curve("linear_m", t1["m"], t1["rank_exp"])  # the AIC-preferred form above
axes[1].plot(grid, R_line.predict(grid), "C2--", label="a + b m (preferred by AIC)")
axes[2].plot(grid, relative_attention_cost(grid), "C1--", label="(1-m)^2 (Eq. 11)")
for ax in axes:  # below the axes: inside, the legend covered data points
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
fig.tight_layout()
print()
out.figure("paper_tables.png", fig, dpi=120)
