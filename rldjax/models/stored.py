"""A value kept as a buffer of its own on XLA:CPU, unchanged everywhere.

:func:`stored` returns ``x``. On CPU (``lax.platform_dependent``) it passes
``x`` through a ``lax.cond`` on ``isfinite(x[0])``: fusion cannot cross a
conditional, so the value is computed once into a buffer that its consumers
read, instead of being recomputed inside each consumer's fusion. The other
branch returns NaNs, so a non-finite value stays non-finite (the divergence
check still sees it); a finite value takes the identity branch, bit for bit.
Other backends get ``x`` itself. Its derivative is the identity (on CPU the
cotangent passes through the transposed conditional the same way).

Two uses in the zoo:

* :mod:`rldjax.models.conv`: the weight gradient reads a stored copy of the
  layer input, not a transposed recomputation of its producer.
* The residual stream (:func:`rldjax.models.layers.residual_stream`): XLA:CPU
  leaves ``x_{k+1} = relu(out_k + x_k)`` unmaterialised and recomputes the
  chain of earlier blocks' sums (their batch norms included) inside each
  consumer; a ShuffleV1 training pass spent most of its time there
  (BENCHMARKS.md).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _stored_on_cpu(x):
  first = x.reshape(-1)[0]
  return lax.cond(jnp.isfinite(first), lambda v: v,
                  lambda v: jnp.full_like(v, jnp.nan), x)


def stored(x):
  """``x``, materialised as a buffer of its own on CPU (module docstring)."""
  if x.size == 0:
    return x
  return lax.platform_dependent(x, cpu=_stored_on_cpu, default=lambda v: v)
