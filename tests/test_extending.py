"""Adding a kernel, an integrator or a density method touches only its own class (issue: core
redesign, point 2): the registries are derived from the classes, and the driver, the CLI choices
and the grid solvers pick a new one up with no other edit."""

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
import solvers
from meanfield.flow import method_table, resolve_method
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
            from meanfield.particles import run_particles

            return run_particles(spec.__class__(**{**spec.__dict__, "method": mf.Euler(), "merge": 1e12}), session)

    assert resolve_method(Frozen()).name == "frozen"
    sol = mf.solve_flow(mf.Uniform(3), N=50, layers=2, method=Frozen())
    assert sol.x.shape == (50, 3)


def test_a_method_carries_its_memory_estimate_and_file_size():
    """meanfield._resources asks the method (the grid solvers answer the same way), not a list of names."""
    from meanfield._resources import MARGIN, RUNTIME_BYTES, estimate_memory, results_size
    from meanfield.flow import make_spec

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
        from meanfield._resources import check_memory

        class Huge(Heavy):
            def array_bytes(self, spec):
                return 2**60

        check_memory(make_spec(mf.Uniform(3), N=50, layers=2, method=Huge()))
