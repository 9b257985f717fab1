r"""Training-mode batch normalisation with float32 arithmetic that stays close
to float64, forward and backward.

For one channel with values :math:`x_i`, :math:`i = 1..n` (over the batch and
spatial axes, and over every device of the ``'data'`` axis when synchronised):

.. math::
   \mu = \tfrac1n \textstyle\sum_i x_i,\quad
   \sigma^2 = \tfrac1n \textstyle\sum_i (x_i - \mu)^2,\quad
   r = (\sigma^2 + \epsilon)^{-1/2},\quad
   \hat x_i = (x_i - \mu)\,r,\quad y_i = \gamma \hat x_i + \beta

(biased variance for normalising, as PyTorch does). Two things keep float32
accurate where a direct float32 evaluation, and its autodiff, lose digits:

* **Shifted moments.** The sums are taken of :math:`d_i = x_i - K` with
  :math:`K` a sample of the channel (the first value; the mean of the devices'
  first values when synchronised), so :math:`\mu = K + m` is carried as two
  float32 numbers and :math:`x_i - \mu = d_i - m` is formed without the
  rounding of :math:`\mu` itself. When :math:`|\mu| \gg \sigma` the rounding of
  a float32 :math:`\mu` alone is a relative error of
  :math:`2^{-24}|\mu|/\sigma` in every :math:`\hat x_i`.
* **Closed-form derivative** (a ``jax.custom_jvp``, so reverse mode, forward
  mode, ``vmap`` and higher derivatives all work):

  .. math::
     \dot y = \gamma r\big(\dot x - \overline{\dot x} - \hat x\,\overline{\hat x \dot x}\big)
              + \dot\gamma\,\hat x + \dot\beta

  whose transpose is the familiar backward
  :math:`\partial x = \gamma r (g - \bar g - \hat x\,\overline{g \hat x})`,
  :math:`\partial\gamma = \sum g \hat x`, :math:`\partial\beta = \sum g`:
  two channel sums of the cotangent, and no path through :math:`\mu` and
  :math:`\sigma^2` whose large terms cancel.

With ``axis_name`` every sum is a ``psum`` of the devices' partial sums, so a
sharded step normalises with the global batch's statistics and its gradients
equal the single-device ones.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _reduce_axes(x) -> tuple[int, ...]:
  return tuple(range(x.ndim - 1))


def _sum(v, axis_name):
  s = jnp.sum(v, axis=_reduce_axes(v))
  return s if axis_name is None else lax.psum(s, axis_name)


def count(x, axis_name=None) -> int:
  """Values per channel: local batch × spatial, times the devices on ``axis_name``."""
  n = int(np.prod([x.shape[a] for a in _reduce_axes(x)]))
  return n * (1 if axis_name is None else lax.axis_size(axis_name))


def _moments(x, axis_name):
  """(K, m, centered, var, n): mean = K + m, centered = x - mean, biased var."""
  shift = lax.stop_gradient(x[(0,) * (x.ndim - 1)])
  if axis_name is not None:
    shift = lax.pmean(shift, axis_name)
  n = count(x, axis_name)
  d = x - shift
  # One pass over the data for both sums (XLA fuses them); the shift keeps
  # E[d^2] - m^2 free of the cancellation the unshifted form suffers.
  m = _sum(d, axis_name) / n
  var = jnp.maximum(_sum(jnp.square(d), axis_name) / n - jnp.square(m), 0.0)
  return shift, m, d - m, var, n


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float = 1e-5, axis_name: str | None = None):
  """Training-mode batch norm over every axis but the last.

  Args:
    x: [..., C] values (float32 or wider; cast bf16 before calling).
    scale, bias: [C] γ and β.
    epsilon: added to the variance.
    axis_name: synchronise the statistics over this mesh axis (inside
      ``shard_map``), or None.

  Returns:
    ``(y, mean, var)``: the normalised output and the batch mean and biased
    variance per channel (for the running statistics).
  """
  shift, m, centered, var, _ = _moments(x, axis_name)
  r = lax.rsqrt(var + epsilon)
  return centered * (r * scale) + bias, shift + m, var


@batch_norm_train.defjvp
def _batch_norm_train_jvp(epsilon, axis_name, primals, tangents):
  x, scale, bias = primals
  dx, dscale, dbias = tangents
  shift, m, centered, var, n = _moments(x, axis_name)
  r = lax.rsqrt(var + epsilon)
  xhat = centered * r
  y = xhat * scale + bias
  mean_dx = _sum(dx, axis_name) / n
  mean_xhat_dx = _sum(xhat * dx, axis_name) / n
  # The channel factor γr multiplies each term after its sum, not before: the
  # transpose (reverse mode) then sums the cotangent g itself, Σg and Σg·x̂,
  # the very sums of ∂β and ∂γ, which XLA computes once; written as
  # γr·(ẋ − mean ẋ − x̂·mean(x̂ẋ)) it summed γr·g apart, one more pass over
  # the activations (BENCHMARKS.md: the student's training pass ~5% faster).
  c = scale * r
  dy = c * dx - c * mean_dx - xhat * (c * mean_xhat_dx) + dscale * xhat + dbias
  dvar = 2.0 * mean_xhat_dx / r  # d/dx of mean((x - mu)^2) = 2 mean((x - mu) dx)
  return (y, shift + m, var), (dy, mean_dx, dvar)
