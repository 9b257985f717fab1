"""A label outside [0, C) never gives a finite loss: an eager call raises
ValueError naming `labels`; under jit (values unknown at trace time) that
example's loss (label_revision: the batch loss) is NaN, and the others stay
what they were."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import losses

# Many small programs: compiled with less optimisation (conftest.py says why).
pytestmark = pytest.mark.usefixtures("less_optimized_compilation")

C = 10
LABELLED = ["dkd", "rld", "swap_kd", "rc", "label_revision"]


def _batch():
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.standard_normal((4, C)), jnp.float32)
  t = jnp.asarray(rng.standard_normal((4, C)), jnp.float32)
  return s, t, np.array([1, 2, 3, 4], np.int32)


@pytest.mark.parametrize("bad", [C, -1])
@pytest.mark.parametrize("name", LABELLED)
def test_eager_call_raises_naming_labels(name, bad):
  s, t, y = _batch()
  y[2] = bad
  with pytest.raises(ValueError, match="`labels` must lie in"):
    losses.get(name)(s, t, jnp.asarray(y))


@pytest.mark.parametrize("bad", [C, -1])
@pytest.mark.parametrize("name", LABELLED)
def test_traced_call_gives_nan_for_that_example(name, bad):
  s, t, y = _batch()
  fn = jax.jit(losses.get(name))
  good = np.asarray(fn(s, t, jnp.asarray(y)))
  y[2] = bad
  out = np.asarray(fn(s, t, jnp.asarray(y)))
  assert not np.isfinite(out).all()
  if losses.PER_EXAMPLE[name]:
    assert np.isnan(out[2])
    np.testing.assert_array_equal(np.delete(out, 2), np.delete(good, 2))
  # The batch objective a train step minimises is NaN: its finite check stops the run.
  mean = jax.jit(lambda a, b, c: jnp.mean(losses.get(name)(a, b, c)))(s, t, jnp.asarray(y))
  assert np.isnan(float(mean))


def _tokens():
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.standard_normal((2, 6, C)), jnp.float32)
  t = jnp.asarray(rng.standard_normal((2, 6, C)), jnp.float32)
  y = rng.integers(0, C, (2, 6)).astype(np.int32)
  y[:, 4:] = -100
  return s, t, y


def _assert_loss_and_gradient_of_kept_tokens(fn, s, t, y, value, grad):
  # The reference, jitted (eager, each of its operations was compiled apart).
  kept_value, kept_grad = jax.jit(jax.value_and_grad(
      lambda k: jnp.sum(fn(k, t[:, :4], jnp.asarray(y[:, :4])))))(s[:, :4])
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_allclose(float(value), float(kept_value), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad[:, :4]), np.asarray(kept_grad), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(grad[:, 4:]), 0.0)


@pytest.mark.parametrize("name", ["dkd", "rld", "swap_kd", "rc"])
def test_padding_tokens_masked_out_give_the_loss_and_gradient_of_the_rest(name):
  """Token-level distillation: padding positions labelled -100 (traced) and
  masked with ``jnp.where`` leave the sum and its gradient those of the kept
  tokens alone, finite, with zero gradient at the padding."""
  s, t, y = _tokens()
  fn = losses.get(name)

  def masked(s, y):
    return jnp.sum(jnp.where(y >= 0, fn(s, t, y), 0.0))
  value, grad = jax.jit(jax.value_and_grad(masked))(s, jnp.asarray(y))
  _assert_loss_and_gradient_of_kept_tokens(fn, s, t, y, value, grad)


@pytest.mark.parametrize("call", ["eager", "jit", "jit, labels closed over", "chunked"])
@pytest.mark.parametrize("name", ["dkd", "rld", "ldrld", "swap_kd", "rc"])
def test_padding_labels_clamped_then_masked_work_eagerly_and_without_nans(name, call):
  """The README's recipe, ``jnp.where(labels >= 0, loss(s, t,
  jnp.maximum(labels, 0)), 0.0)``: the loss and gradient of the kept tokens
  in every way of calling it. The -100 labels themselves raise in an eager
  call (and with labels known at trace time), and their NaN trips
  ``jax.debug_nans``; clamped, no NaN is ever computed."""
  s, t, y = _tokens()
  fn = losses.get(name)
  inner = losses.chunked(fn, rows=5) if call == "chunked" else fn

  def masked(s, y):
    return jnp.sum(jnp.where(y >= 0, inner(s, t, jnp.maximum(y, 0)), 0.0))
  with jax.debug_nans(True):
    if call == "eager":
      value, grad = jax.value_and_grad(masked)(s, jnp.asarray(y))
    elif call == "jit, labels closed over":
      value, grad = jax.jit(jax.value_and_grad(lambda s: masked(s, jnp.asarray(y))))(s)
    else:
      value, grad = jax.jit(jax.value_and_grad(masked))(s, jnp.asarray(y))
  _assert_loss_and_gradient_of_kept_tokens(fn, s, t, y, value, grad)
  if call == "eager" and name != "ldrld":  # the unclamped labels (ldrld reads none)
    with pytest.raises(ValueError, match="`labels` must lie in"):
      fn(s, t, jnp.asarray(y))
