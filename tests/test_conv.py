"""rldjax.models.conv: same values as lax.conv_general_dilated, cheaper program.

* Forward, both gradients, jvp, Hessian-vector products and vmap equal those
  of ``jax.lax.conv_general_dilated`` exactly (the same XLA convolutions run;
  only where the weight gradient reads its input from differs), for the
  convolutions of the zoo: 3×3 / 1×1, stride 1 and 2, grouped, float32 and
  bfloat16.
* A non-finite first input entry gives a non-finite weight gradient (the NaN
  branch), so the divergence check still fires.
* On CPU the compiled gradient holds the conditional that stores the input
  (the whole point; if XLA ever simplified it away this fails, and
  ``benchmarks/step_parts.py`` shows the cost come back).
"""
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


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_and_gradients_equal_lax(case, dtype):
  x, w, kwargs = _args(case, dtype)
  ours, ref = _pair(kwargs)
  _equal(jax.jit(ours)(x, w), jax.jit(ref)(x, w))
  g = jnp.asarray(np.random.default_rng(1).standard_normal(ref(x, w).shape), dtype)
  loss = lambda f: lambda x, w: jnp.sum((f(x, w) * g).astype(jnp.float32) ** 2)
  _equal(jax.jit(jax.grad(loss(ours), (0, 1)))(x, w),
         jax.jit(jax.grad(loss(ref), (0, 1)))(x, w))


@pytest.mark.parametrize("case", CASES[:3])
def test_jvp_hvp_and_vmap_equal_lax(case):
  x, w, kwargs = _args(case)
  ours, ref = _pair(kwargs)
  rng = np.random.default_rng(2)
  tx = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  tw = jnp.asarray(rng.standard_normal(w.shape), jnp.float32)
  _equal(jax.jit(lambda x, w: jax.jvp(ours, (x, w), (tx, tw)))(x, w),
         jax.jit(lambda x, w: jax.jvp(ref, (x, w), (tx, tw)))(x, w))

  def hvp(f):
    loss = lambda w: jnp.sum(jnp.tanh(f(x, w)))
    return jax.jit(lambda w: jax.jvp(jax.grad(loss), (w,), (tw,))[1])(w)
  np.testing.assert_allclose(hvp(ours), hvp(ref), rtol=1e-6, atol=1e-6)

  xs = jnp.stack([x, 2 * x])
  per = lambda f: jax.vmap(jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), 1), (0, None))
  _equal(jax.jit(per(ours))(xs, w), jax.jit(per(ref))(xs, w))


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
  variables = model.init(jax.random.key(0), x, train=False)
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=False))))(
          variables["params"]))
  assert "custom_jvp_call" in jaxpr and "platform_index" in jaxpr
