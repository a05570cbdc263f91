"""float32 vs float64 attention effective rank on the same uniform tokens (docs/limitations.md)."""
import jax

jax.config.update("jax_enable_x64", True)
import numpy as np, jax.numpy as jnp, meanfield as mf
from meanfield.diagnostics import attention_statistics
rng=np.random.default_rng(0)
for kern in [mf.Softmax(1.0), mf.Softmax(4.0), mf.Linear(0.25)]:
  for d in (4, 16, 64):
    x=rng.normal(size=(2048,d)); x/=np.linalg.norm(x,axis=1,keepdims=True)
    q=x[:512]
    r64=float(attention_statistics(kern, jnp.asarray(q), jnp.asarray(x))["effective_rank"])
    r32=float(attention_statistics(kern, jnp.asarray(q,jnp.float32), jnp.asarray(x,jnp.float32))["effective_rank"])
    print(kern.name, float(kern.alpha), d, round(r64,3), round(r32,3), f"{(r32-r64)/r64*100:+.2f}%")
