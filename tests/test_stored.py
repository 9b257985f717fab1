"""rldjax.models.stored: the identity, materialised as a buffer on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import models
from rldjax.models.stored import stored


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_value_is_the_input_bit_for_bit(dtype):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5, 7)), dtype)
  y = jax.jit(stored)(x)
  assert y.dtype == x.dtype and y.shape == x.shape
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
  empty = jnp.zeros((0, 4))
  assert jax.jit(stored)(empty).shape == (0, 4)


def test_non_finite_values_stay_non_finite():
  x = jnp.arange(12.0).reshape(3, 4)
  inner = jax.jit(stored)(x.at[2, 1].set(jnp.inf))  # not the first entry: unchanged
  assert inner[2, 1] == jnp.inf and np.all(np.isfinite(np.delete(np.asarray(inner).ravel(), 9)))
  for bad in (jnp.nan, jnp.inf):  # the first entry decides the branch: all NaN
    assert np.all(np.isnan(jax.jit(stored)(x.at[0, 0].set(bad))))


def test_derivative_is_the_identity():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6)), jnp.float32)
  c = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(stored(x)) * c)))(x)
  np.testing.assert_allclose(grad, jnp.cos(x) * c, rtol=1e-6)
  _, tangent = jax.jvp(stored, (x,), (c,))
  np.testing.assert_array_equal(tangent, c)
  np.testing.assert_array_equal(jax.vmap(stored)(x), x)


def _forward(tag, train):
  x = jnp.zeros((2, 32, 32, 3))
  model = models.create(tag)
  shapes = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
  return jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"])), shapes, x


@pytest.mark.parametrize("tag,train,blocks", [
    ("cifar/resnet56", False, 27), ("cifar/resnet56", True, 0),
    ("cifar/resnet32x4", False, 15),
    ("cifar/wrn_16_2", False, 0), ("cifar/wrn_16_2", True, 0),
    ("cifar/wrn_40_1", False, 0), ("cifar/wrn_40_1", True, 18),
    ("cifar/ShuffleV1", False, 16), ("cifar/ShuffleV1", True, 16),
])
def test_residual_stream_is_stored_where_measured_faster(tag, train, blocks, monkeypatch):
  """The residual blocks that store their output (ResNets in inference,
  WRNs with stages of more than two blocks in training, ShuffleV1 always;
  BENCHMARKS.md), counted while the forward pass is lowered; that each
  stored value stays a conditional in the compiled program is the next
  test's."""
  from rldjax.models import layers
  calls = []
  monkeypatch.setattr(layers, "stored", lambda v: calls.append(v.shape) or stored(v))
  forward, shapes, x = _forward(tag, train)
  calls.clear()  # initialising traced the inference pass
  lowered = forward.lower(shapes, x).as_text()
  assert len(calls) == blocks
  assert lowered.count("stablehlo.is_finite") == blocks  # the stored copies' conditions


@pytest.mark.parametrize("train,blocks", [(False, 3), (True, 0)])
def test_compiled_forward_keeps_one_conditional_per_stored_block(train, blocks):
  """XLA:CPU keeps each stored residual stream as a conditional (fusion
  cannot cross it, so the sum is computed once into a buffer): resnet8x4 has
  three residual blocks, stored in inference only. Without the conditional
  XLA would recompute earlier blocks' sums inside each consumer."""
  if jax.default_backend() != "cpu":
    pytest.skip("the stored residual stream is a CPU-only program change")
  forward, shapes, x = _forward("cifar/resnet8x4", train)
  assert forward.lower(shapes, x).compile().as_text().count("conditional(") == blocks


def test_plain_identity_leaves_no_conditional(monkeypatch):
  """The count above comes from ``residual_stream`` itself."""
  if jax.default_backend() != "cpu":
    pytest.skip("the stored residual stream is a CPU-only program change")
  from rldjax.models import resnet_cifar
  monkeypatch.setattr(resnet_cifar, "residual_stream", lambda v, store=True: v)
  forward, shapes, x = _forward("cifar/resnet8x4", False)
  assert "conditional(" not in forward.lower(shapes, x).compile().as_text()
