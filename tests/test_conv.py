"""rldjax.models.conv: same values as lax.conv_general_dilated, cheaper program.

* Forward values equal ``jax.lax.conv_general_dilated``'s exactly (except the
  grouped float32 ones on CPU, below); so do both
  gradients, jvp, Hessian-vector products and vmap for unstrided and
  bfloat16 convolutions (the same XLA convolutions run; only where the
  weight gradient reads its input from differs), for the convolutions of the
  zoo: 3×3 / 1×1, stride 1 and 2, grouped, float32 and bfloat16.
* Strided float32 convolutions take their input tangent in polyphase form
  (a sum of stride-1 convolutions, whose transpose avoids XLA:CPU's dilated
  convolution): the same products summed in another order, so their input
  gradient is compared with a float64 numpy reference, as accurate as
  ``lax``'s own; the polyphase form itself equals the strided convolution for
  strides 2 and 3, kernels 1–5, every padding kind, other layouts and groups.
* A non-finite first input entry gives a non-finite weight gradient (the NaN
  branch), so the divergence check still fires.
* On CPU the compiled gradient holds the conditional that stores the input
  (the whole point; if XLA ever simplified it away this fails, and
  ``benchmarks/step_parts.py`` shows the cost come back).
* On CPU, inside a ``while_loop`` body, every convolution of an ungrouped
  convolution's gradient is in the dimension numbers XLA:CPU's library
  kernels take (``benchmarks/while_loop.py`` shows the cost otherwise).
* On CPU, depthwise and grouped 1×1 float32 convolutions are computed without
  a convolution (tap sums, a batched matrix product): forward and gradients
  as accurate as lax's against a float64 reference.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rldjax.models import conv

DN = ("NHWC", "HWIO", "NHWC")
CASES = [  # (hw, cin, cout, kernel, stride, padding, groups)
    (8, 4, 6, 3, 1, 1, 1),
    (8, 4, 6, 3, 2, 1, 1),
    (7, 6, 6, 1, 1, 0, 1),
    (8, 6, 12, 1, 2, 0, 1),
    (8, 6, 6, 3, 1, 1, 6),   # depthwise (MobileNetV2, ShuffleNet)
    (9, 6, 6, 3, 2, 1, 6),   # depthwise, strided
    (8, 6, 12, 1, 1, 0, 3),  # grouped 1×1 (ShuffleNetV1)
]


def _args(case, dtype=jnp.float32, seed=0):
  hw, cin, cout, k, stride, pad, groups = case
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((3, hw, hw, cin)), dtype)
  w = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout)) * 0.3, dtype)
  kwargs = dict(window_strides=(stride, stride), padding=[(pad, pad), (pad, pad)],
                dimension_numbers=DN, feature_group_count=groups)
  return x, w, kwargs


def _pair(kwargs):
  ours = lambda x, w: conv.conv_general_dilated(x, w, **kwargs)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  return ours, ref


def _equal(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(u, np.float32), np.asarray(v, np.float32))


def _polyphase_on_cpu(case, dtype=jnp.float32):
  return (case[4] > 1 and case[6] == 1 and dtype == jnp.float32
          and jax.default_backend() == "cpu")


def _resummed_on_cpu(case, dtype=jnp.float32):
  """Depthwise and grouped 1×1 float32 convolutions on CPU: computed as tap
  sums / a batched matrix product (the same products, another order)."""
  return case[6] > 1 and dtype == jnp.float32 and jax.default_backend() == "cpu"


def _float64_reference(kwargs, x, w, g):
  """(y, dloss/dx, dloss/dw) of loss = sum((conv(x, w) * g)²) by lax in float64."""
  with jax.enable_x64(True):
    x64, w64, g64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (x, w, g))
    conv = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
    y = conv(x64, w64)
    grads = jax.grad(lambda x, w: jnp.sum((conv(x, w) * g64) ** 2), (0, 1))(x64, w64)
    return [np.asarray(a) for a in (y, *grads)]


def _numpy_input_gradient(x, w, dy, stride, pad):
  """d/dx of sum(conv(x, w) * dy) in float64 (groups 1, NHWC / HWIO)."""
  x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
  k = w.shape[0]
  dx = np.zeros((x.shape[0], x.shape[1] + 2 * pad, x.shape[2] + 2 * pad, x.shape[3]))
  oh, ow = dy.shape[1:3]
  for kh in range(k):
    for kw in range(k):
      dx[:, kh:kh + stride * (oh - 1) + 1:stride, kw:kw + stride * (ow - 1) + 1:stride] += (
          np.einsum("nhwo,io->nhwi", dy, w[kh, kw]))
  return dx[:, pad:pad + x.shape[1], pad:pad + x.shape[2]]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_and_gradients_equal_lax(case, dtype):
  x, w, kwargs = _args(case, dtype)
  ours, ref = _pair(kwargs)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(ref(x, w).shape), dtype)
  loss = lambda f: lambda x, w: jnp.sum((f(x, w) * g).astype(jnp.float32) ** 2)
  got = jax.jit(jax.grad(loss(ours), (0, 1)))(x, w)
  want = jax.jit(jax.grad(loss(ref), (0, 1)))(x, w)
  if _resummed_on_cpu(case, dtype):  # as accurate as lax's, against float64
    exact = _float64_reference(kwargs, x, w, g)
    for ours_value, lax_value, value in zip((jax.jit(ours)(x, w), *got),
                                            (jax.jit(ref)(x, w), *want), exact):
      ours_error = np.max(np.abs(np.asarray(ours_value, np.float64) - value))
      lax_error = np.max(np.abs(np.asarray(lax_value, np.float64) - value))
      assert ours_error <= 4 * lax_error + 1e-6 * np.max(np.abs(value)), (ours_error, lax_error)
    return
  _equal(jax.jit(ours)(x, w), jax.jit(ref)(x, w))
  if not _polyphase_on_cpu(case, dtype):
    _equal(got, want)
    return
  _equal(got[1], want[1])  # the weight gradient is untouched
  dy = 2 * ref(x, w) * g * g  # d loss / d conv output
  exact = _numpy_input_gradient(x, w, dy, case[4], case[5])
  ours_error = np.max(np.abs(np.asarray(got[0], np.float64) - exact))
  lax_error = np.max(np.abs(np.asarray(want[0], np.float64) - exact))
  assert ours_error <= 4 * lax_error + 1e-6 * np.max(np.abs(exact)), (ours_error, lax_error)


@pytest.mark.parametrize("case", CASES[:3])
def test_jvp_hvp_and_vmap_equal_lax(case):
  x, w, kwargs = _args(case)
  ours, ref = _pair(kwargs)
  rng = np.random.default_rng(2)
  tx = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  tw = jnp.asarray(rng.standard_normal(w.shape), jnp.float32)
  jvps = [jax.jit(lambda x, w: jax.jvp(f, (x, w), (tx, tw)))(x, w) for f in (ours, ref)]
  if _polyphase_on_cpu(case):
    _equal(jvps[0][0], jvps[1][0])
    np.testing.assert_allclose(jvps[0][1], jvps[1][1], rtol=1e-5, atol=1e-5)
  else:
    _equal(*jvps)

  def hvp(f):
    loss = lambda w: jnp.sum(jnp.tanh(f(x, w)))
    return jax.jit(lambda w: jax.jvp(jax.grad(loss), (w,), (tw,))[1])(w)
  np.testing.assert_allclose(hvp(ours), hvp(ref), rtol=1e-6, atol=1e-6)

  xs = jnp.stack([x, 2 * x])
  per = lambda f: jax.vmap(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), 1), (0, None))
  _equal(jax.jit(per(ours))(xs, w), jax.jit(per(ref))(xs, w))


POLYPHASE_CASES = [  # (x shape, w shape, strides, padding, dimension numbers, groups)
    ((2, 8, 8, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1)), DN, 1),
    ((2, 9, 7, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1)), DN, 1),     # odd sizes
    ((2, 11, 10, 3), (5, 4, 3, 2), (3, 2), ((2, 1), (0, 3)), DN, 1),   # stride 3, uneven pads
    ((2, 9, 9, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0)), DN, 1),     # 1×1: one phase
    ((2, 8, 8, 4), (2, 2, 4, 3), (3, 3), "SAME", DN, 1),               # kernel < stride
    ((2, 10, 10, 4), (3, 3, 4, 4), (2, 2), "VALID", DN, 1),
    ((2, 8, 8, 4), (3, 3, 4, 5), (2, 2), ((-1, 2), (1, 0)), DN, 1),    # negative padding
    ((2, 6, 8, 8), (3, 3, 2, 8), (2, 2), ((1, 1), (1, 1)), DN, 4),     # grouped
    ((2, 4, 8, 8), (5, 4, 3, 3), (2, 2), ((1, 1), (1, 1)), ("NCHW", "OIHW", "NCHW"), 1),
    ((2, 8, 4), (3, 4, 5), (2,), ((1, 1),), ("NWC", "WIO", "NWC"), 1),  # 1-D
]


@pytest.mark.parametrize("case", POLYPHASE_CASES)
def test_polyphase_form_equals_the_strided_convolution(case):
  xs, ws, strides, padding, numbers, groups = case
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
  w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
  kwargs = dict(window_strides=strides, padding=padding, dimension_numbers=numbers,
                feature_group_count=groups)
  want = lax.conv_general_dilated(x, w, **kwargs)
  params = dict(lhs_dilation=None, rhs_dilation=None, batch_group_count=1, precision=None,
                preferred_element_type=None, **kwargs)
  assert conv._polyphase_applies(x, w, params)
  got = jax.jit(lambda x, w: conv._polyphase(x, w, params))(x, w)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # and the input gradient of the module, through the polyphase tangent
  g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x, w, **kwargs) * g)))(x)
  np.testing.assert_allclose(grad(conv.conv_general_dilated), grad(lax.conv_general_dilated),
                             rtol=1e-5, atol=1e-5)


def test_polyphase_only_where_it_applies():
  x = jnp.zeros((2, 8, 8, 4))
  w = jnp.zeros((3, 3, 4, 5))
  base = dict(window_strides=(2, 2), padding=((1, 1), (1, 1)), lhs_dilation=None,
              rhs_dilation=None, dimension_numbers=DN, feature_group_count=1,
              batch_group_count=1, precision=None, preferred_element_type=None)
  assert conv._polyphase_applies(x, w, base)
  assert not conv._polyphase_applies(x, w, {**base, "window_strides": (1, 1)})
  assert not conv._polyphase_applies(x, w, {**base, "rhs_dilation": (2, 2)})
  assert not conv._polyphase_applies(x, w, {**base, "lhs_dilation": (2, 2)})
  assert not conv._polyphase_applies(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), base)
  assert not conv._polyphase_applies(x[:, :2, :2], w, {**base, "padding": "VALID"})  # empty


def test_cpu_input_gradient_of_strided_convolution_is_not_dilated():
  if jax.default_backend() != "cpu":
    pytest.skip("the polyphase input gradient is a CPU-only program change")
  x, w, kwargs = _args(CASES[1])
  ours, ref = _pair(kwargs)
  hlo = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x, w) ** 2))).lower(x).compile().as_text()
  assert "lhs_dilate" in hlo(ref)
  assert "lhs_dilate" not in hlo(ours)


@pytest.mark.parametrize("case", [c for c in CASES if c[6] == 1])
def test_cpu_gradients_in_a_loop_body_are_canonical_convolutions(case):
  """Inside a while_loop, XLA:CPU runs a convolution whose dimension numbers
  are not ``b01f_01io->b01f`` in a generic loop (10-100x slower,
  benchmarks/while_loop.py); ours gives it only that form, lax does not."""
  if jax.default_backend() != "cpu":
    pytest.skip("the tangent layouts are a CPU-only program change")
  x, w, kwargs = _args(case)

  def labels(f):
    def body(i, carry):
      w, x = carry
      gx, gw = jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), (0, 1))(x, w)
      return w - 1e-3 * gw, x - 1e-3 * gx
    hlo = jax.jit(lambda c: lax.fori_loop(0, 3, body, c)).lower((w, x)).compile().as_text()
    return set(re.findall(r"dim_labels=([^,\s]+)", hlo))
  ours, ref = _pair(kwargs)
  assert labels(ours) == {"b01f_01io->b01f"}
  assert labels(ref) - {"b01f_01io->b01f"}


@pytest.mark.parametrize("case", [c for c in CASES if c[6] > 1])
def test_cpu_depthwise_and_grouped_pointwise_need_no_convolution(case):
  """XLA:CPU runs grouped convolutions and their gradients in a generic loop
  (a MobileNetV2 training pass 2.6x slower); on CPU these are tap sums / a
  batched matrix product, forward and backward."""
  if jax.default_backend() != "cpu":
    pytest.skip("the depthwise and grouped 1×1 forms are CPU-only")
  x, w, kwargs = _args(case)
  ours, ref = _pair(kwargs)
  hlo = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), (0, 1))).lower(
      x, w).compile().as_text()
  assert "convolution(" in hlo(ref)
  assert "convolution(" not in hlo(ours)


def test_non_finite_input_gives_non_finite_weight_gradient():
  x, w, kwargs = _args(CASES[0])
  ours, _ = _pair(kwargs)
  grad_w = jax.jit(jax.grad(lambda x, w: jnp.sum(ours(x, w)), 1))
  assert np.all(np.isfinite(grad_w(x, w)))
  for bad in (jnp.nan, jnp.inf):
    assert not np.all(np.isfinite(grad_w(x.at[0, 0, 0, 0].set(bad), w)))
    assert not np.all(np.isfinite(grad_w(x.at[1, 3, 3, 2].set(bad), w)))


def test_cpu_gradient_stores_the_input():
  if jax.default_backend() != "cpu":
    pytest.skip("the stored input is a CPU-only program change")
  x, w, kwargs = _args(CASES[0])
  ours, ref = _pair(kwargs)

  def hlo(f):
    loss = lambda x, w: jnp.sum(jnp.maximum(f(jnp.maximum(x, 0), w), 0) ** 2)
    return jax.jit(jax.grad(loss, 1)).lower(x, w).compile().as_text()
  assert "conditional(" in hlo(ours)
  assert "conditional(" not in hlo(ref)


def test_flax_conv_uses_it_in_every_model():
  from rldjax import models
  model = models.create("cifar/resnet8x4")
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0, impl="rbg"))
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=False))))(
          variables["params"]))
  assert "custom_jvp_call" in jaxpr and "platform_index" in jaxpr
