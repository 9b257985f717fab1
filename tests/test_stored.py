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


@pytest.mark.parametrize("tag,train,blocks", [
    ("cifar/resnet56", False, 27), ("cifar/resnet56", True, 0),
    ("cifar/resnet32x4", False, 15),
    ("cifar/wrn_16_2", False, 0), ("cifar/wrn_16_2", True, 0),
    ("cifar/wrn_40_1", False, 0), ("cifar/wrn_40_1", True, 18),
    ("cifar/ShuffleV1", False, 16), ("cifar/ShuffleV1", True, 16),
])
def test_residual_stream_is_stored_where_measured_faster(tag, train, blocks):
  """One conditional per residual block in the compiled forward pass where
  the model stores its residual stream (ResNets in inference, WRNs with
  stages of more than two blocks in training, ShuffleV1 always;
  BENCHMARKS.md), none elsewhere. XLA:CPU would otherwise recompute earlier
  blocks' sums inside each consumer."""
  if jax.default_backend() != "cpu":
    pytest.skip("the stored residual stream is a CPU-only program change")
  x = jnp.zeros((2, 32, 32, 3))
  model = models.create(tag)
  variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"]))
  assert forward.lower(variables, x).compile().as_text().count("conditional(") == blocks


def test_plain_identity_leaves_no_conditional(monkeypatch):
  """The count above comes from ``residual_stream`` itself."""
  if jax.default_backend() != "cpu":
    pytest.skip("the stored residual stream is a CPU-only program change")
  from rldjax.models import resnet_cifar
  monkeypatch.setattr(resnet_cifar, "residual_stream", lambda v, store=True: v)
  x = jnp.zeros((2, 32, 32, 3))
  model = models.create("cifar/resnet56")
  variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  assert "conditional(" not in hlo.as_text()
