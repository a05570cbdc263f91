"""Adding a kernel, an integrator, a density method or a real-model adapter touches only its own
class (issue: core redesign, point 2): the registries are derived from the classes, and the
driver, the CLI choices, the grid solvers and ``meanfield-dump`` pick a new one up with no other
edit."""

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
import solvers
from meanfield.flow.driver import method_table, resolve_method
from solvers.integrators import AbstractIntegrator, _loop
from solvers.sphere import retract


@pytest.fixture
def fourth_kernel():
    class Doubled(solvers.Softmax):
        """softmax at twice the temperature: a fourth kernel written as one class."""

        name: ClassVar[str] = "doubled"

        def __init__(self, alpha=1.0, key_block=1024, query_block=1024):
            self.alpha, self.key_block, self.query_block = 2 * alpha, key_block, query_block

    yield Doubled
    del solvers.KERNELS["doubled"]


@pytest.fixture
def midpoint():
    class Midpoint(AbstractIntegrator):
        """Explicit midpoint with retraction (order 2): a new integrator written as one class."""

        name: ClassVar[str] = "midpoint"
        order: ClassVar[int] = 2

        def advance(self, field, x, n_steps, h):
            h = jnp.asarray(h, x.dtype)
            return _loop(lambda y: retract(y, h * field.velocity(retract(y, 0.5 * h * field.velocity(y)))),
                         x, n_steps), 2 * n_steps

    yield Midpoint
    del solvers.INTEGRATORS["midpoint"]


def test_a_fourth_kernel_needs_only_its_class(fourth_kernel):
    assert "doubled" in mf.kernels()
    x0 = mf.VonMisesFisher(3, 1.0).sample(0, 200)
    a = mf.solve_flow(x0, kernel="doubled", layers=3, dt=0.2)  # a name runs alpha = 0.25
    b = mf.solve_flow(x0, kernel=mf.Softmax(0.5), layers=3, dt=0.2)
    np.testing.assert_allclose(a.x, b.x, atol=1e-12)  # same arithmetic
    z = mf.solve_flow(mf.VonMisesFisher(3, 1.0), N=10, kernel="doubled", layers=2,
                      method=mf.Zonal(cells=64))  # the grid solver reads the family, not the name
    assert z.params["kernel"] == "doubled" and np.isfinite(z.diagnostics["entropy"]).all()
    from solvers.distributed import shardable_kernels  # the token-sharded drive asks the class too

    assert "doubled" in shardable_kernels() and "bilinear" not in shardable_kernels()


def test_a_new_integrator_needs_only_its_class(midpoint):
    assert "midpoint" in mf.methods() and method_table()["midpoint"] is midpoint
    x0 = mf.VonMisesFisher(3, 1.0).sample(0, 100)
    sol = mf.solve_flow(x0, kernel=mf.Linear(0.5), layers=4, dt=0.1, method="midpoint")
    ref = mf.solve_flow(x0, kernel=mf.Linear(0.5), layers=4, dt=0.1, method="heun")
    assert np.abs(sol.x - ref.x).max() < 1e-4  # two second-order schemes, h = 0.1: O(h^3) per step
    assert sol.stats["field_evaluations"] == 8 and sol.params["method"] == "midpoint"


def test_a_density_method_is_any_object_with_run():
    class Frozen:
        """A trivial 'method' that returns the start: no registration anywhere."""

        name = "frozen"

        def describe(self):
            return {"name": self.name}

        def run(self, spec, session):  # session: the run's checkpoint state, an argument like spec
            from meanfield.flow.particles import run_particles

            return run_particles(spec.__class__(**{**spec.__dict__, "method": mf.Euler(), "merge": 1e12}), session)

    assert resolve_method(Frozen()).name == "frozen"
    sol = mf.solve_flow(mf.Uniform(3), N=50, layers=2, method=Frozen())
    assert sol.x.shape == (50, 3)


def test_a_method_carries_its_memory_estimate_and_file_size():
    """meanfield.flow.resources asks the method (the grid solvers answer the same way), not a list of names."""
    from meanfield.flow.resources import MARGIN, RUNTIME_BYTES, estimate_memory, results_size
    from meanfield.flow.driver import make_spec

    class Heavy:
        name = "heavy"

        def describe(self):
            return {"name": self.name}

        def array_bytes(self, spec):
            return 10**9

        def saved_bytes(self, spec):
            return 123

        def run(self, spec, session):  # pragma: no cover - never run here
            raise AssertionError

    spec = make_spec(mf.Uniform(3), N=50, layers=2, method=Heavy())
    plain = make_spec(mf.Uniform(3), N=50, layers=2, method=mf.Zonal(cells=8))
    assert estimate_memory(spec) == int(RUNTIME_BYTES + MARGIN * 10**9)
    assert results_size(spec) - 123 == results_size(plain) - plain.method.saved_bytes(plain)
    with pytest.raises(ValueError, match="needs about"):  # a method's own estimate is checked like any other
        from meanfield.flow.resources import check_memory

        class Huge(Heavy):
            def array_bytes(self, spec):
                return 2**60

        check_memory(make_spec(mf.Uniform(3), N=50, layers=2, method=Huge()))


class _ToyModel:
    """A two-block NumPy attention model: ``x <- x + (1/H) sum_h softmax(scale q_h k_h^T) x`` with
    ``q_h = x Wq_h``, ``k_h = x Wk_h``; ``hooks`` (callables ``(layer, x, q, k)``) see each block."""

    def __init__(self, d=6, heads=2, head_dim=3, layers=2, seed=0):
        rng = np.random.default_rng(seed)
        self.w = {f"{n}{l}": rng.normal(size=(heads, d, head_dim)) / np.sqrt(d) for l in range(layers) for n in "qk"}
        self.heads, self.head_dim, self.layers, self.d = heads, head_dim, layers, d
        self.scale, self.hooks, self.attention = head_dim**-0.5, [], {}

    def state_dict(self):
        return self.w

    def __call__(self, x):
        for l in range(self.layers):
            q, k = np.einsum("nd,hde->hne", x, self.w[f"q{l}"]), np.einsum("nd,hde->hne", x, self.w[f"k{l}"])
            for hook in self.hooks:
                hook(l, x, q, k)
            s = self.scale * q @ k.transpose(0, 2, 1)
            a = np.exp(s - s.max(-1, keepdims=True))
            self.attention[l] = a / a.sum(-1, keepdims=True)
            x = x + self.attention[l].mean(0) @ x
        return x


def _dump_toy(model, tokens, *, n_query=512, seed=0, layers=None, sample_rows=1024, sample_layers=None,
              key_block=1024, self_check=True):
    """A new adapter's dump function on the shared skeleton (self-check, capture check, metadata)."""
    from meanfield.stats.diagnostics import query_subset
    from meanfield.dump import adapter
    from meanfield.dump.stats import Recorder, build_dump

    x = np.random.default_rng(seed).normal(size=(tokens, model.d))
    idx = np.asarray(query_subset(tokens, n_query, seed))
    smp = np.asarray(query_subset(tokens, min(sample_rows, tokens), seed + 1))
    plain = model(x) if self_check else None
    rec, kept = Recorder(idx, model.scale, sample_indices=smp, sample_layers=sample_layers, key_block=key_block), {}
    keep = range(model.layers) if layers is None else layers

    def hook(l, x, q, k):
        if l in keep:
            rec.attention(l, q, k)
            rec.block_input(l, x)
            kept[l] = (q, k)

    model.hooks.append(hook)
    try:
        hooked = model(x)
    finally:
        model.hooks.remove(hook)
    diff = adapter.self_check(self_check, lambda: float(np.abs(hooked - plain).max()))
    errors = {}
    for l, (q, k) in kept.items():
        s = model.scale * q[:, idx] @ k.transpose(0, 2, 1)
        a = np.exp(s - s.max(-1, keepdims=True))
        errors[l] = float(np.abs(a / a.sum(-1, keepdims=True) - model.attention[l][:, idx]).max())
    adapter.capture_check(errors, 1e-12)
    meta = adapter.metadata("toy", rec, model_id="toy", checkpoint=model, scale=model.scale, S=1, P=tokens,
                            N=tokens, patch_start_idx=0, num_heads=model.heads, head_dim=model.head_dim,
                            d_model=model.d, seed=seed, input_kind="images",
                            extra={"self_check_max_abs_diff": diff, "capture_max_abs_error": errors})
    return build_dump(rec, meta, idx, np.zeros_like(idx), idx, np.zeros(len(idx), np.int8), ["token"],
                      sample_indices=smp, input_images=["noise"])


@pytest.fixture
def toy_adapter():
    import jax

    from meanfield.dump.adapter import Adapter, unregister

    class Toy(Adapter):
        """A fifth real-model adapter written as one class: its sub-command, options and run."""

        name = "toy"
        help = "a two-block NumPy attention model on random tokens"

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--tokens", type=int, default=40, help="tokens of the random input")

        def run(self, args, common, text=None):
            return _dump_toy(_ToyModel(), args.tokens, **common)

    x64 = jax.config.jax_enable_x64  # meanfield-dump's main() turns on 64-bit JAX for its process
    yield Toy
    unregister("toy")
    jax.config.update("jax_enable_x64", x64)


def test_a_new_dump_adapter_needs_only_its_class(toy_adapter, tmp_path, capsys):
    from meanfield.dump import read_dump
    from meanfield.dump.__main__ import build_parser, cli
    from meanfield.dump.adapter import adapters
    from meanfield.dump.format import REQUIRED_ATTRS

    assert list(adapters())[-1] == "toy" and "toy (a two-block NumPy" in build_parser().description
    assert cli(["toy", "--help"]) == 0 and "--tokens" in capsys.readouterr().out
    out = tmp_path / "toy.h5"
    assert cli(["toy", "--tokens", "30", "--n-query", "8", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    dump = read_dump(out)
    assert set(REQUIRED_ATTRS) <= set(dump.meta) and dump.meta["adapter"] == "toy" and dump.meta["N"] == 30
    assert dump.meta["checkpoint_hash"].startswith("sha256:") and "numpy" in dump.meta["library_versions"]
    assert list(dump.layers) == [0, 1] and dump.attention["effective_rank"].shape == (2,)
    assert dump.meta["extra"]["self_check_max_abs_diff"] == 0.0
    assert cli(["toy", "--out", str(out)]) == 2  # the shared options and checks: exists, no --overwrite


def test_a_merging_strategy_tells_the_study_helpers_what_it_does():
    """merge_study.merged_tokens asks the strategy (merger) instead of switching on ToMe/FastVGGT."""
    import dataclasses

    from meanfield.studies.merge_study import merged_tokens
    from meanfield.flow.merged import ToMe

    @dataclasses.dataclass(frozen=True)
    class DropHalf:
        """Keeps every other token with twice the mass: a strategy that is none of the built-ins."""

        name = "drop-half"

        def merger(self, x):
            sizes = jnp.asarray(np.arange(x.shape[0]) % 2 == 0, x.dtype) * 2
            return lambda: (x, sizes, sizes)

    x = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0][:, :3].repeat(5, axis=0)  # (20, 3)
    xm, w, seconds = merged_tokens(DropHalf(), x, repeats=1)
    assert xm.shape == (10, 3) and float(w.sum()) == 20.0 and seconds >= 0
    assert ToMe(ratio=0.5).unmerge is False and ToMe(ratio=0.5).removed_per_layer(20, 4).sum() == 10
    with pytest.raises(ValueError, match="merger"):
        merged_tokens(object(), x)
