"""Float32 batch norm against float64 (rldjax.models.batch_norm).

* The layer alone: forward and every gradient within 2e-6 of float64 numpy
  references, also where |mean| >> std (there a direct float32 evaluation,
  differentiated by autodiff, is off by ~6e-5: shown below, so the test can
  fail).
* Derivatives: jvp, grad, Hessian-vector products against float64 finite
  differences; vmap.
* Whole models (resnet8x4, wrn_16_2, MobileNetV2, ShuffleV1) at three seeds
  of the parity recipe weights: the float32 gradient of every parameter of
  CE + RLD on a batch of 8 equals the float64 gradient of the same model
  within 1e-4 of each tensor's largest entry.

About the model comparison: a ReLU whose input lies within float32 rounding
of zero takes the other branch in float32, and there the exact gradient itself
is discontinuous (measured: the float64 gradient of ShuffleV1 moves by 4% when
the input images are scaled by 1 + 1e-7 noise). No float32 implementation can
match float64 across such a kink, so the float64 reference is evaluated with
the float32 run's ReLU activation pattern (recorded from the same compiled
float32 program): the comparison then measures arithmetic only.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import convert, losses, models
from rldjax.models import batch_norm
from tests.test_models_parity import recipe_state_dict

EPS = 1e-5
REGIMES = [(0.0, 1.0), (3.0, 1.0), (100.0, 1.0), (10.0, 0.01), (1.0, 1e-3)]


def _inputs(mean, std, seed=0, shape=(8, 6, 6, 16)):
  rng = np.random.default_rng(seed)
  f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # exactly representable
  x = f32(mean + std * rng.standard_normal(shape))
  scale = f32(1 + 0.1 * rng.standard_normal(shape[-1]))
  bias = f32(0.1 * rng.standard_normal(shape[-1]))
  weight = rng.standard_normal(shape)
  return x, scale, bias, weight


def numpy_reference(x, scale, bias, weight):
  """float64 forward and the analytic gradients of sum(tanh(y) * weight)."""
  flat = x.reshape(-1, x.shape[-1])
  mu, var = flat.mean(0), flat.var(0)
  xhat = (x - mu) / np.sqrt(var + EPS)
  y = xhat * scale + bias
  g = (1 - np.tanh(y) ** 2) * weight
  gf = g.reshape(-1, x.shape[-1])
  xhf = xhat.reshape(-1, x.shape[-1])
  dx = scale / np.sqrt(var + EPS) * (g - gf.mean(0) - xhat * (gf * xhf).mean(0))
  return y, dx, (gf * xhf).sum(0), gf.sum(0), mu, var


def _loss(norm_fn, weight):
  return lambda x, s, b: jnp.sum(jnp.tanh(norm_fn(x, s, b)) * weight.astype(x.dtype))


def _float32_errors(norm_fn, x, scale, bias, weight):
  y_ref, *grads_ref, _, _ = numpy_reference(x, scale, bias, weight)
  args = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
  y = jax.jit(norm_fn)(*args)
  grads = jax.jit(jax.grad(_loss(norm_fn, weight), (0, 1, 2)))(*args)
  rel = lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))
  return [rel(y, y_ref)] + [rel(g, r) for g, r in zip(grads, grads_ref)]


def rldjax_bn(x, s, b):
  return batch_norm.batch_norm_train(x, s, b, EPS, None)[0]


def direct_bn(x, s, b):
  """The textbook float32 evaluation, differentiated by autodiff (for contrast)."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + EPS) * s + b


@pytest.mark.parametrize("mean,std", REGIMES)
def test_float32_forward_and_gradients_match_float64(mean, std):
  x, scale, bias, weight = _inputs(mean, std)
  errors = _float32_errors(rldjax_bn, x, scale, bias, weight)
  assert max(errors) <= 2e-6, dict(zip(("y", "dx", "dscale", "dbias"), errors))
  _, mu, var = batch_norm.batch_norm_train(*(jnp.asarray(a, jnp.float32) for a in (x, scale, bias)))
  *_, mu_ref, var_ref = numpy_reference(x, scale, bias, weight)
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-6, atol=1e-6 * std)
  np.testing.assert_allclose(var, var_ref, rtol=2e-6)


def test_direct_float32_evaluation_loses_digits_where_mean_dominates():
  """The same check fails for the textbook evaluation when |mean| >> std."""
  x, scale, bias, weight = _inputs(10.0, 0.01)
  assert max(_float32_errors(direct_bn, x, scale, bias, weight)) > 1e-5


def test_bf16_input_keeps_float32_statistics():
  x, scale, bias, _ = _inputs(3.0, 1.0)
  y16, mu, var = batch_norm.batch_norm_train(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32),
                                             jnp.asarray(scale, jnp.float32),
                                             jnp.asarray(bias, jnp.float32))
  assert y16.dtype == mu.dtype == var.dtype == jnp.float32


def _f64(fn):
  with jax.enable_x64(True):
    return fn()


def test_jvp_grad_hessian_and_vmap_against_finite_differences():
  def check():
    x, scale, bias, weight = _inputs(2.0, 0.5, shape=(4, 3, 3, 5))
    loss = _loss(rldjax_bn, weight)
    rng = np.random.default_rng(7)
    v = [rng.standard_normal(a.shape) for a in (x, scale, bias)]
    h = 1e-6
    shifted = lambda t: [a + t * d for a, d in zip((x, scale, bias), v)]
    fd = (loss(*shifted(h)) - loss(*shifted(-h))) / (2 * h)
    _, jvp = jax.jvp(loss, (x, scale, bias), tuple(v))
    grads = jax.grad(loss, (0, 1, 2))(x, scale, bias)
    assert abs(float(jvp) - float(fd)) <= 1e-7 * abs(float(fd)) + 1e-9
    assert abs(sum(float(jnp.vdot(g, d)) for g, d in zip(grads, v)) - float(fd)) <= 1e-7 * abs(float(fd)) + 1e-9
    # Hessian-vector product: forward-over-reverse vs differences of the gradient.
    grad_fn = jax.grad(loss, (0, 1, 2))
    _, hvp = jax.jvp(grad_fn, (x, scale, bias), tuple(v))
    fd_hvp = [(a - b) / (2 * h) for a, b in zip(grad_fn(*shifted(h)), grad_fn(*shifted(-h)))]
    for got, ref in zip(hvp, fd_hvp):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    # vmap over independent batches equals a loop.
    stack = np.stack([x, x * 2 + 1, x - 3])
    mapped = jax.vmap(lambda a: rldjax_bn(a, scale, bias))(stack)
    for i in range(3):
      np.testing.assert_allclose(mapped[i], rldjax_bn(stack[i], scale, bias), rtol=1e-12)
  _f64(check)


# --------------------------------------------------------------------------
# Whole models.
# --------------------------------------------------------------------------

class ReluPattern:
  """Stands in for ``flax.linen.relu``: records ``u > 0`` (a float32 forward)
  or replays recorded patterns in call order (the float32 gradient and the
  float64 reference). Both gradients replay: XLA may compute one ``u`` in two
  fusions and round it differently in each, so a pattern
  returned by a compiled program need not be the one its own gradient used
  for values within an ulp of zero; one such element moved a batch norm's
  gradient by 1e-2 of its largest entry on an AVX-512 CPU."""

  def __init__(self):
    self.recorded, self.replay, self.index = [], None, 0

  def __call__(self, u):
    if self.replay is None:
      self.recorded.append(u > 0)
      return jnp.maximum(u, 0)
    mask = self.replay[self.index]
    self.index += 1
    return jnp.where(mask, u, jnp.zeros((), u.dtype))


@functools.lru_cache
def state_dict_entries(tag):
  """(name, shape) of the model's PyTorch state_dict, in order."""
  module = models.create(tag, 100)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                              train=False))
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)
  return tuple((k, list(v.shape)) for k, v in convert.to_torch_state_dict(tag, zeros).items())


def recipe_variables(tag, seed):
  return convert.from_torch_state_dict(tag, recipe_state_dict(state_dict_entries(tag), seed))


@pytest.mark.parametrize("tag", ["cifar/resnet8x4", "cifar/wrn_16_2", "cifar/MobileNetV2",
                                 "cifar/ShuffleV1"])
def test_model_gradients_float32_match_float64(tag, monkeypatch):
  pattern = ReluPattern()
  monkeypatch.setattr(nn, "relu", pattern)

  def loss_for(dtype):
    model = models.create(tag, 100, dtype=dtype)

    def loss(params, batch_stats, images, teacher, labels):
      logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images,
                              train=True, mutable=["batch_stats"])
      ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1))
      return ce + jnp.mean(losses.rld(logits, teacher, labels, alpha=1.0, beta=8.0,
                                      temperature=4.0))
    return loss

  loss32 = loss_for(jnp.float32)

  def recorded(params, batch_stats, images, teacher, labels):
    pattern.recorded = []
    loss32(params, batch_stats, images, teacher, labels)
    return list(pattern.recorded)

  record = jax.jit(recorded)
  loss64 = loss_for(jnp.float64)

  def replay(loss):
    def replayed(params, batch_stats, images, teacher, labels, masks):
      pattern.replay, pattern.index = masks, 0
      return loss(params, batch_stats, images, teacher, labels)
    return replayed
  grad32 = jax.jit(jax.grad(replay(loss32)))
  grad64 = jax.jit(jax.grad(replay(loss64)))  # one compilation (under x64) for the three seeds
  for seed in (1, 2, 3):
    pattern.replay = None
    variables = recipe_variables(tag, seed)
    rng = np.random.default_rng([seed, 999999])
    images = rng.standard_normal((8, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 100, 8).astype(np.int32)
    teacher = (3 * rng.standard_normal((8, 100))).astype(np.float32)
    masks = jax.device_get(record(variables["params"], variables["batch_stats"], images, teacher,
                                  labels))  # NumPy: the checks below compile nothing
    assert sum(int(np.sum(m)) for m in masks) > 0 and not all(np.all(m) for m in masks)
    g32 = grad32(variables["params"], variables["batch_stats"], images, teacher, labels, masks)
    pattern.replay = None

    def reference():
      to64 = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
      return jax.device_get(grad64(
          to64(variables["params"]), to64(variables["batch_stats"]), images.astype(np.float64),
          teacher.astype(np.float64), labels, masks))

    g64 = _f64(reference)
    largest = max(np.abs(a).max() for a in jax.tree_util.tree_leaves(g64))
    for (path, ref), got in zip(jax.tree_util.tree_leaves_with_path(g64),
                                jax.tree_util.tree_leaves(g32)):
      ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
      name = f"{tag} seed {seed} {jax.tree_util.keystr(path)}"
      if np.abs(ref).max() < 1e-9 * largest:
        # Zero in exact arithmetic (a shift that only reaches batch norms,
        # which remove it): float32 leaves rounding noise only.
        assert np.abs(got).max() <= 1e-5 * largest, name
        continue
      err = np.abs(got - ref).max() / np.abs(ref).max()
      assert err <= 1e-4, f"{name}: {err:.2e} of the tensor's largest entry"
