"""A convolution whose weight gradient is cheaper on XLA:CPU, with the same values.

:func:`conv_general_dilated` has the signature of ``jax.lax.conv_general_dilated``
(it is what every zoo model's ``nn.Conv`` calls) and computes exactly the same
forward value, tangents and gradients. Only the compiled program differs.

Why: for the weight gradient of ``y = conv(x, w)``, XLA:CPU lowers
``dW[kh, kw, ci, co] = sum_{n, h, w} x[n, h + kh, w + kw, ci] * dy[n, h, w, co]``
to a convolution that needs ``x`` transposed to ``(ci, h, w, n)``. Layout
assignment adds that transpose and fusion then merges it with the elementwise
producer of ``x`` (batch norm, residual add, ReLU of the layer before), so the
producer is recomputed in transposed order with strided reads of every input:
40 ms for one 64×32×32×64 activation instead of ~5 ms for transposing the
stored one (``benchmarks/step_parts.py``). This module makes the weight
gradient read a stored copy of ``x``:

* a ``custom_jvp`` whose tangent rule is the usual bilinear one,
  ``dy = conv(dx, w) + conv(x_stored, dw)``, so ``grad``, ``jvp``, Hessian-vector
  products and ``vmap`` keep working (reverse mode transposes the rule);
* on CPU only (``lax.platform_dependent``), ``x_stored`` is ``x`` passed
  through a ``lax.cond`` on ``isfinite(x[0])``: fusion cannot cross a
  conditional, so the transpose reads a buffer. The other branch returns NaNs,
  so a non-finite input still gives a non-finite weight gradient (the
  divergence check sees it); a finite input takes the identity branch and the
  gradient is bit-identical to the plain convolution's
  (``tests/test_conv.py``). Other backends use ``x`` itself.

Measured (``python benchmarks/step_parts.py``, 2-core CPU, batch 64):
resnet8x4 training forward + backward 341 ms with plain convolutions, 314 ms
with these (interleaved in one run).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _stored_on_cpu(x):
  """``x`` unchanged when finite at its first entry (else NaNs), as a
  conditional's result: a stored buffer that fusion cannot recompute."""
  first = x.reshape(-1)[0]
  return lax.cond(jnp.isfinite(first), lambda v: v,
                  lambda v: jnp.full_like(v, jnp.nan), x)


def _stored(x):
  if x.size == 0:
    return x
  return lax.platform_dependent(x, cpu=_stored_on_cpu, default=lambda v: v)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x, w, params):
  return lax.conv_general_dilated(x, w, **dict(params))


@_conv.defjvp
def _conv_jvp(params, primals, tangents):
  x, w = primals
  tx, tw = tangents
  y = _conv(x, w, params)
  return y, _conv(tx, w, params) + _conv(_stored(x), tw, params)


def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """``jax.lax.conv_general_dilated`` with a weight gradient that reads a stored
  input on XLA:CPU (module docstring); same values everywhere."""
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers) or dimension_numbers is None:
    numbers = dimension_numbers
  else:
    numbers = _hashable(dimension_numbers)
  params = (("window_strides", _hashable(window_strides)),
            ("padding", _hashable(padding)),
            ("lhs_dilation", _hashable(lhs_dilation)),
            ("rhs_dilation", _hashable(rhs_dilation)),
            ("dimension_numbers", numbers),
            ("feature_group_count", feature_group_count),
            ("batch_group_count", batch_group_count),
            ("precision", _hashable(precision)),
            ("preferred_element_type", preferred_element_type))
  return _conv(lhs, rhs, params)
