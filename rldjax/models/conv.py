"""A convolution whose gradients are cheaper on XLA:CPU, with the same values.

:func:`conv_general_dilated` has the signature of ``jax.lax.conv_general_dilated``
(it is what every zoo model's ``nn.Conv`` calls) and computes exactly the same
forward value everywhere, and exactly the same tangents and gradients, except
on CPU: the input tangent of strided float32/64 convolutions ("Strided
convolutions" below), and depthwise and grouped 1×1 float32 convolutions,
forward and backward ("Grouped convolutions" below), sum the same products
in another order. Only the compiled program differs.

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
* on CPU only, ``x_stored`` is :func:`rldjax.models.stored.stored` of ``x``:
  ``x`` passed through a ``lax.cond`` on ``isfinite(x[0])``. Fusion cannot
  cross a conditional, so the transpose reads a buffer. The other branch
  returns NaNs, so a non-finite input still gives a non-finite weight gradient
  (the divergence check sees it); a finite input takes the identity branch
  and the weight gradient is bit-identical to the plain convolution's
  (``tests/test_conv.py``). Other backends use ``x`` itself.

Strided convolutions, input gradient: XLA:CPU transposes ``y = conv(x, w)``
with stride ``s`` into a convolution of the ``s``-times dilated output
gradient, ``s²`` times the multiply-adds in 2-D (most of them with zeros). On
CPU the input tangent ``conv(dx, w)`` of a strided, undilated float32/64
convolution is written in polyphase form instead (:func:`_polyphase`: one
stride-1 convolution per phase ``r`` of each spatial dimension, sub-sampled
input ``x_pad[r::s]`` with sub-kernel ``w[r::s]``): the same products, so
its transpose is a sum of stride-1 transposed convolutions with no wasted
work. The input gradient then equals the plain one up to summation order
(``tests/test_conv.py`` compares both with a float64 reference); the forward
value and the weight gradient are untouched. Other backends and dtypes use
the plain rule.

Inside a ``while_loop`` (``config.steps_per_call`` > 1), XLA:CPU does not
rewrite convolutions into the dimension numbers its library kernels take
(``b01f_01io->b01f``: input batch-major and feature-minor, kernel
spatial-in-out), as it does at the top level; the gradient convolutions that
JAX's transpose rules produce swap batch and feature roles
(``f01b_i01o->01bf``) and then run in a generic loop, 10-100x slower
(``python benchmarks/while_loop.py``). On CPU, for ungrouped convolutions, the
tangent rule therefore computes both linear terms on explicitly transposed
operands (:func:`_permuted_conv`), chosen so that JAX's transposes of them
are convolutions in the kernels' dimension numbers to begin with. Same
products in the same order: the gradients are bit-identical to those above
(``tests/test_conv.py``), and at the top level the program is what XLA made
of it before. Other grouped convolutions keep the plain rule (depthwise and
grouped 1×1 float32 ones take no convolution on CPU: "Grouped convolutions").

Grouped convolutions: XLA:CPU runs grouped convolutions and their gradients
in a generic loop (a 64×16×16×64 depthwise 3×3: forward 33 ms, weight
gradient 58 ms and 2.2 s inside a ``while_loop``, input gradient 75 ms). On
CPU, float32 convolutions of the zoo's layout that are depthwise (one filter
per channel, MobileNetV2's and ShuffleNet's 3×3) are computed as a sum over
the kernel taps of strided slices of the padded input times per-channel
weights (:func:`_depthwise_taps`: forward 5-15 ms, weight gradient 6-19 ms,
input gradient 2.6 ms for the same case), and grouped 1×1 ones (ShuffleNetV1)
as one batched matrix product (:func:`_grouped_pointwise`, 3-10x faster
forward + backward); their gradients are ordinary autodiff of those forms.
MobileNetV2's training pass (batch 64) went from 636 to 244 ms, ShuffleV2's
from 1421 to 669 ms, ShuffleV1's from 3327 to 2959 ms. The same products
summed in another order: values and gradients are as accurate as ``lax``'s
against a float64 reference (``tests/test_conv.py``), and the models match
the published ones (``tests/test_models_parity.py``).

Measured (``python benchmarks/step_parts.py``, 2-core CPU, batch 64, plain
convolutions interleaved in the same run): resnet8x4 training forward +
backward 352 ms with plain convolutions, 306 ms with these; the polyphase
input gradient alone took it from 313–317 to 298–301 ms (BENCHMARKS.md).
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rldjax.models.stored import stored


def _polyphase_applies(x, w, p) -> bool:
  """Strided, undilated, float32/64 convolutions with a non-empty output."""
  if (p["batch_group_count"] != 1 or any(s < 1 for s in p["window_strides"])
      or all(s == 1 for s in p["window_strides"])
      or any(d != 1 for d in (p["lhs_dilation"] or ())) or any(d != 1 for d in (p["rhs_dilation"] or ()))
      or x.dtype != w.dtype or x.dtype not in (jnp.float32, jnp.float64)):
    return False
  _, sizes = _polyphase_geometry(x, w, p)
  return all(o >= 1 for o in sizes)


def _polyphase_geometry(x, w, p):
  numbers = lax.conv_dimension_numbers(x.shape, w.shape, p["dimension_numbers"])
  padding = p["padding"]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads([x.shape[a] for a in numbers.lhs_spec[2:]],
                                  [w.shape[a] for a in numbers.rhs_spec[2:]],
                                  p["window_strides"], padding)
  sizes = [(x.shape[a] + lo + hi - w.shape[b]) // s + 1 for a, b, s, (lo, hi) in
           zip(numbers.lhs_spec[2:], numbers.rhs_spec[2:], p["window_strides"], padding)]
  return (numbers, tuple(padding)), sizes


def _polyphase(x, w, p, orders=None):
  """The strided convolution as a sum of stride-1 convolutions, one per phase.

  With stride ``s``, kernel taps ``k = r + s·a`` (phase ``r < s``) read the
  input at ``s·i + r + s·a`` (padded input, output ``i``): phase ``r``'s
  taps form a stride-1 convolution of the sub-sampled input ``x_pad[r::s]``
  with the sub-kernel ``w[r::s]``, per spatial dimension. Same products, same
  multiply-add count; only the summation order differs from the strided
  convolution. What it is for: the transpose (the input gradient) is then a
  sum of stride-1 transposed convolutions, where XLA:CPU would convolve an
  ``s``-times dilated output gradient (``s²`` times the multiply-adds in 2-D).
  """
  (numbers, padding), sizes = _polyphase_geometry(x, w, p)
  config = [(0, 0, 0)] * x.ndim
  for axis, (lo, hi) in zip(numbers.lhs_spec[2:], padding):
    config[axis] = (lo, hi, 0)
  x = lax.pad(x, jnp.zeros((), x.dtype), config)
  dims = list(zip(numbers.lhs_spec[2:], numbers.rhs_spec[2:], p["window_strides"], sizes))
  total = None
  for phase in itertools.product(*(range(min(s, w.shape[b])) for _, b, s, _ in dims)):
    xr, wr = x, w
    for r, (a, b, s, size) in zip(phase, dims):
      taps = -(-(w.shape[b] - r) // s)
      length = size + taps - 1
      xr = lax.slice_in_dim(xr, r, r + s * (length - 1) + 1, stride=s, axis=a)
      wr = lax.slice_in_dim(wr, r, r + s * (taps - 1) + 1, stride=s, axis=b)
    kwargs = dict(window_strides=(1,) * len(dims), padding="VALID", dimension_numbers=numbers,
                  feature_group_count=p["feature_group_count"], precision=p["precision"],
                  preferred_element_type=p["preferred_element_type"])
    y = (_permuted_conv(xr, wr, kwargs, *orders) if orders
         else lax.conv_general_dilated(xr, wr, **kwargs))
    total = y if total is None else total + y
  return total


# Inside a ``while_loop`` body (``steps_per_call`` > 1), XLA:CPU does not
# rewrite a convolution whose dimension numbers are not its library kernels'
# (input batch-major and feature-minor, kernel spatial-in-out) into one that
# is, as it does at the top level: the gradient convolutions that JAX's
# transpose rules produce (they swap the batch and feature roles) then run in
# a generic loop, 10-100x slower. The tangent rules below compute the same
# linear maps on operands transposed so that JAX's transposes of them are
# convolutions in those dimension numbers to begin with.
_WEIGHT_TANGENT_ORDERS = ("fsb", "iso", "sbf")  # x, kernel, output: see _permuted_conv
_INPUT_TANGENT_ORDERS = ("bsf", "soi", "bsf")


def _permuted_conv(x, w, kwargs, x_order, w_order, out_order):
  """``lax.conv_general_dilated(x, w, **kwargs)``, computed on ``x`` and ``w``
  transposed to the dimension orders ``x_order`` (over "b", "f", "s": batch,
  feature, the spatial dimensions in order) and ``w_order`` (over "o", "i",
  "s": output and input feature), with the output produced in ``out_order``
  and transposed back: the same value, the same products in the same order.

  What the orders are for is JAX's transpose of this map. Transposing a
  convolution in its kernel swaps the batch and feature roles of the input
  and output specs (the input's features become the batch of the weight
  gradient, the output's batch its input features): with ``x`` in "fsb",
  the kernel in "iso" and the output in "sbf", the weight gradient is a
  convolution of an input in "bsf" with a kernel in "sio" into "bsf", the
  layouts XLA:CPU's kernels take (_WEIGHT_TANGENT_ORDERS). Transposing in the
  input swaps the kernel's "o" and "i": a kernel in "soi" gives an input
  gradient with its kernel in "sio" (_INPUT_TANGENT_ORDERS).
  """
  p = dict(kwargs)
  numbers = lax.conv_dimension_numbers(x.shape, w.shape, p["dimension_numbers"])
  k = len(numbers.lhs_spec) - 2
  x_order, w_order, out_order = (o.replace("s", "s" * k) for o in (x_order, w_order, out_order))

  def source_dims(spec, order, names):
    """For each position of ``order``, the dimension of the array laid out by ``spec``."""
    spatial = iter(spec[2:])
    return tuple(next(spatial) if c == "s" else spec[names.index(c)] for c in order)

  def spec_of(order, names):
    return tuple([order.index(names[0]), order.index(names[1])]
                 + [i for i, c in enumerate(order) if c == "s"])

  p["dimension_numbers"] = lax.ConvDimensionNumbers(
      spec_of(x_order, "bf"), spec_of(w_order, "oi"), spec_of(out_order, "bf"))
  y = lax.conv_general_dilated(jnp.transpose(x, source_dims(numbers.lhs_spec, x_order, "bf")),
                               jnp.transpose(w, source_dims(numbers.rhs_spec, w_order, "oi")), **p)
  return jnp.transpose(y, np.argsort(source_dims(numbers.out_spec, out_order, "bf")))


def _ungrouped(params) -> bool:
  p = dict(params)
  return p["feature_group_count"] == 1 and p["batch_group_count"] == 1


def _input_tangent(tx, w, params):
  """``conv(tx, w)``. On CPU: strided ones in the polyphase form (its
  transpose, the input gradient, avoids XLA:CPU's dilated convolution), and
  ungrouped ones (each phase's, for those) with the kernel in
  _INPUT_TANGENT_ORDERS; elsewhere plain."""
  p = dict(params)
  orders = _INPUT_TANGENT_ORDERS if _ungrouped(params) else None
  if _polyphase_applies(tx, w, p):
    cpu = lambda a, b: _polyphase(a, b, p, orders)
  elif orders:
    cpu = lambda a, b: _permuted_conv(a, b, p, *orders)
  else:
    return _conv(tx, w, params)
  return lax.platform_dependent(tx, w, cpu=cpu, default=lambda a, b: _conv(a, b, params))


def _weight_tangent(x, tw, params):
  """``conv(x, tw)``; on CPU, ungrouped, in _WEIGHT_TANGENT_ORDERS."""
  if not _ungrouped(params):
    return _conv(x, tw, params)
  cpu = lambda a, b: _permuted_conv(a, b, dict(params), *_WEIGHT_TANGENT_ORDERS)
  return lax.platform_dependent(x, tw, cpu=cpu, default=lambda a, b: _conv(a, b, params))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x, w, params):
  return lax.conv_general_dilated(x, w, **dict(params))


@_conv.defjvp
def _conv_jvp(params, primals, tangents):
  x, w = primals
  tx, tw = tangents
  y = _conv(x, w, params)
  return y, _input_tangent(tx, w, params) + _weight_tangent(stored(x), tw, params)


_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # NHWC, HWIO, NHWC


def _depthwise_applies(x, w, p) -> bool:
  """Depthwise float32 convolutions of the zoo's layout: one filter per input
  channel (``feature_group_count`` = channels in = channels out), undilated,
  with a non-empty output."""
  if (x.ndim != 4 or w.ndim != 4 or x.dtype != jnp.float32 or w.dtype != jnp.float32
      or p["batch_group_count"] != 1 or p["preferred_element_type"] not in (None, jnp.float32)
      or any(d != 1 for d in (p["lhs_dilation"] or ())) or any(d != 1 for d in (p["rhs_dilation"] or ()))
      or any(s < 1 for s in p["window_strides"])):
    return False
  if lax.conv_dimension_numbers(x.shape, w.shape, p["dimension_numbers"]) != _NHWC:
    return False
  channels = x.shape[3]
  if not p["feature_group_count"] == channels == w.shape[3] or w.shape[2] != 1 or channels < 2:
    return False
  _, sizes = _polyphase_geometry(x, w, p)
  return all(o >= 1 for o in sizes)


def _depthwise_taps(x, w, p):
  """A depthwise convolution (:func:`_depthwise_applies`) as a sum over its
  kernel taps of strided slices of the padded input times that tap's
  per-channel weights: ``y = sum_{kh, kw} x_pad[:, kh::s, kw::s, :] * w[kh, kw, 0]``
  (the slices cut to the output size). The same products as the convolution,
  summed in another order. Its gradients are slices, pads, products and
  reductions, which XLA:CPU fuses; its depthwise convolution and their
  gradients run in a generic loop (BENCHMARKS.md)."""
  (_, padding), (oh, ow) = _polyphase_geometry(x, w, p)
  sh, sw = p["window_strides"]
  n, _, _, c = x.shape
  x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), padding[0] + (0,), padding[1] + (0,),
                                          (0, 0, 0)])
  total = None
  for i in range(w.shape[0]):
    for j in range(w.shape[1]):
      window = lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c),
                         (1, sh, sw, 1))
      term = window * w[i, j, 0]
      total = term if total is None else total + term
  return total


def _grouped_pointwise_applies(x, w, p) -> bool:
  """Grouped (not depthwise) 1×1 float32 convolutions of the zoo's layout,
  stride 1, unpadded, undilated (ShuffleNetV1's)."""
  if (x.ndim != 4 or w.ndim != 4 or x.dtype != jnp.float32 or w.dtype != jnp.float32
      or p["batch_group_count"] != 1 or p["preferred_element_type"] not in (None, jnp.float32)
      or p["feature_group_count"] < 2 or w.shape[:2] != (1, 1)
      or any(s != 1 for s in p["window_strides"])
      or any(d != 1 for d in (p["lhs_dilation"] or ())) or any(d != 1 for d in (p["rhs_dilation"] or ()))):
    return False
  if lax.conv_dimension_numbers(x.shape, w.shape, p["dimension_numbers"]) != _NHWC:
    return False
  (_, padding), _ = _polyphase_geometry(x, w, p)
  return all(lo == hi == 0 for lo, hi in padding) and not _depthwise_applies(x, w, p)


def _grouped_pointwise(x, w, p):
  """A grouped 1×1 convolution (:func:`_grouped_pointwise_applies`) as one
  batched matrix product over the groups: ``y[..., g, :] = x[..., g, :] @
  w_g`` (channels split into contiguous groups, as the convolution does).
  The same products; XLA:CPU runs a batched dot and its gradients in its
  matrix kernels, where its grouped convolution gradients take a generic
  loop."""
  g = p["feature_group_count"]
  n, h, wd, c = x.shape
  out = w.shape[3]
  kernel = w[0, 0].reshape(c // g, g, out // g).transpose(1, 0, 2)  # [g, c/g, out/g]
  y = jnp.einsum("nhwgi,gio->nhwgo", x.reshape(n, h, wd, g, c // g), kernel)
  return y.reshape(n, h, wd, out)


def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """``jax.lax.conv_general_dilated`` with programs that XLA:CPU runs faster
  (module docstring): the same values, up to summation order on CPU for
  strided input gradients and grouped float32 convolutions."""
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
  p = dict(params)
  for applies, cpu_form in ((_depthwise_applies, _depthwise_taps),
                            (_grouped_pointwise_applies, _grouped_pointwise)):
    if applies(lhs, rhs, p):
      return lax.platform_dependent(lhs, rhs, cpu=lambda a, b, f=cpu_form: f(a, b, p),
                                    default=lambda a, b: _conv(a, b, params))
  return _conv(lhs, rhs, params)
