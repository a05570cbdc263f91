"""Sharding over devices (meanfield.studies.sharding): two CPU devices give the one-device results.

XLA reads ``--xla_force_host_platform_device_count`` when the backend starts, so the two-device
checks run in a child process with that flag; the child prints one JSON line of errors, which
this process compares with the tolerances. float32, as asked by issue 11: <= 1e-6 (the sharded
sums are taken in another order, which changes a float32 result by a few ulp per step, ~1e-7
after 5 steps). Counts of the phase-diagram statistics must be identical.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from meanfield.studies.phase import phase_diagram
    from meanfield.studies.sharding import advance_ensemble, advance_sharded, device_mesh, shard_batch, shard_tokens
    from solvers import AttentionField, make_integrator, make_kernel

    out = {"devices": len(jax.devices())}
    tokens = device_mesh("tokens")
    x = np.random.default_rng(0).standard_normal((48, 5)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xs = shard_tokens(x, tokens)
    out["token_shards"] = len(xs.addressable_shards)
    opts = {"key_block": 8, "query_block": 16}
    cases = [("linear", "gather", "layer"), ("softmax", "gather", "layer"), ("softmax", "ring", "heun"),
             ("usa", "ring", "layer")]  # linear all-reduces moments whatever the strategy
    for kernel, strategy, method in cases:
        y = advance_sharded(xs, mesh=tokens, kernel=kernel, alpha=2.0, h=0.1, n_steps=5, method=method,
                            strategy=strategy, kernel_options=None if kernel == "linear" else opts)
        field = AttentionField(make_kernel(kernel, 2.0, **({} if kernel == "linear" else opts)), 1.0)
        ref = make_integrator(method).advance(field, jnp.asarray(x), 5, jnp.float32(0.1))[0]
        assert y.dtype == jnp.float32 and y.sharding.spec[0] == "tokens"
        out[f"{kernel}-{strategy}-{method}"] = float(jnp.max(jnp.abs(y - ref)))
    batch = device_mesh("batch")
    xb = np.random.default_rng(1).standard_normal((4, 16, 3)).astype(np.float32)
    alphas = np.array([0.5, 1.0, 4.0, 9.0])
    ye = advance_ensemble(xb, mesh=batch, kernel="softmax", alpha=alphas, h=0.1, n_steps=5)
    out["ensemble_spec"] = ye.sharding.spec[0]
    ref = [make_integrator("layer").advance(AttentionField(make_kernel("softmax", float(a)), 1.0),
                                            jnp.asarray(xi / np.linalg.norm(xi, axis=1, keepdims=True)), 5,
                                            jnp.float32(0.1))[0] for xi, a in zip(xb, alphas)]
    out["ensemble"] = float(jnp.max(jnp.abs(ye - jnp.stack(ref))))
    kw = dict(n=8, d=3, n_systems=6, t1=3.0, dt=0.1, n_saves=4, per_system=True, dtype="float32", block=5)
    one = phase_diagram([0.5, 6.0], **kw)
    two = phase_diagram([0.5, 6.0], mesh=batch, **kw)
    out["phase_m"] = float(np.max(np.abs(one.per_system["order_parameter"] - two.per_system["order_parameter"])))
    out["phase_counts_equal"] = bool(all(np.array_equal(one.per_system[k], two.per_system[k])
                                         for k in ("pairs", "clusters")))
    out["phase_devices"] = two.params["devices"]
    try:
        shard_tokens(x[:47], tokens)
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def two_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_two_devices_token_axis_matches_one_device(two_devices):
    assert two_devices["devices"] == 2 and two_devices["token_shards"] == 2
    errs = {k: v for k, v in two_devices.items() if k.count("-") == 2}
    assert len(errs) == 4
    assert max(errs.values()) <= 1e-6, errs


def test_two_devices_batch_axis_matches_one_device(two_devices):
    assert two_devices["ensemble_spec"] == "batch"
    assert two_devices["ensemble"] <= 1e-6
    assert two_devices["phase_devices"] == 2
    assert two_devices["phase_m"] <= 1e-6 and two_devices["phase_counts_equal"]


def test_two_devices_indivisible_tokens_is_one_clear_error(two_devices):
    want = "the number of tokens N = 47 must be a multiple of the 2 devices along mesh axis 'tokens'"
    assert two_devices["error"] == want


def test_one_device_api_in_process():
    """The same API on this process's single device (no flag needed): sharding is a no-op."""
    from meanfield.studies.sharding import advance_sharded, device_mesh
    from solvers import AttentionField, Layer, make_kernel

    mesh = device_mesh("tokens", n_devices=1)
    x = np.random.default_rng(2).standard_normal((12, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = advance_sharded(x, mesh=mesh, kernel="softmax", alpha=3.0, h=0.2, n_steps=4, strategy="ring")
    ref = Layer().advance(AttentionField(make_kernel("softmax", 3.0), 1.0), jnp.asarray(x), 4, 0.2)[0]
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="strategy"):
        advance_sharded(x, mesh=mesh, strategy="tree")
    with pytest.raises(ValueError, match="n_devices must be <="):
        device_mesh(n_devices=len(jax.devices()) + 1)
