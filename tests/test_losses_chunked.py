"""losses.chunked: the per-example losses computed a chunk of examples at a
time give the plain call's values and gradients (student, teacher and a
hyperparameter, reverse and forward mode), hold less temporary memory, and
refuse what cannot be chunked, naming the argument."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import losses

# Many small programs: compiled with less optimisation (conftest.py says why).
pytestmark = pytest.mark.usefixtures("less_optimized_compilation")

PER_EXAMPLE = [name for name in losses.names() if losses.PER_EXAMPLE[name]]


def _logits(shape, dtype, classes_axis):
  rng = np.random.default_rng(0)
  s = jnp.asarray(3 * rng.standard_normal(shape), dtype)
  t = jnp.asarray(3 * rng.standard_normal(shape), dtype)
  label_shape = shape[:classes_axis] + shape[classes_axis + 1:]
  y = jnp.asarray(rng.integers(0, shape[classes_axis], label_shape), jnp.int32)
  return s, t, y


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_chunks_give_the_plain_values_and_gradients(name, dtype):
  # 3 x 7 = 21 examples, class axis 1: five chunks of 4 and a remainder of 1.
  s, t, y = _logits((3, 40, 7), dtype, 1)
  plain, in_chunks = losses.get(name), losses.chunked(losses.get(name), rows=4)

  def values_and_grads(fn):
    """The per-example values and the gradients of their sum: one program
    for each of the two calls (jitted: eager, each of the loss's operations
    is compiled apart, ~4 s for ldrld)."""
    def total(s, t):
      values = fn(s, t, y, axis=1)
      return values.sum(), values
    (_, values), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(s, t)
    return values, grads

  (v0, g0), (v1, g1) = values_and_grads(plain), values_and_grads(in_chunks)
  assert v1.shape == (3, 7) and v1.dtype == jnp.float32
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  for a, b in zip(g1, g0):
    assert a.dtype == b.dtype == dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-5, atol=1e-6 if dtype == jnp.float32 else 1e-3)


def test_hyperparameter_gradients_and_forward_mode_go_through():
  s, t, y = _logits((10, 30), jnp.float32, 1)
  in_chunks = losses.chunked(losses.rld, rows=3)

  def temperature_grad(fn):
    return jax.jit(jax.grad(lambda temperature: fn(s, t, y, temperature=temperature).sum()))(4.0)
  np.testing.assert_allclose(temperature_grad(in_chunks), temperature_grad(losses.rld), rtol=1e-5)
  tangent = jnp.asarray(np.random.default_rng(1).standard_normal(s.shape), jnp.float32)

  def directional(fn):
    return jax.jit(lambda s, v: jax.jvp(lambda s: fn(s, t, y), (s,), (v,))[1])(s, tangent)
  np.testing.assert_allclose(directional(in_chunks), directional(losses.rld), rtol=1e-5, atol=1e-6)


def test_a_label_outside_the_classes_spoils_only_its_own_example_under_jit():
  s, t, y = _logits((9, 12), jnp.float32, 1)
  y = y.at[5].set(12)
  out = jax.jit(lambda s, t, y: losses.chunked(losses.dkd, rows=2)(s, t, y))(s, t, y)
  assert np.isnan(out[5]) and np.isfinite(np.delete(np.asarray(out), 5)).all()
  with pytest.raises(ValueError, match="`labels` must lie in"):  # eager: raises, as dkd
    losses.chunked(losses.dkd, rows=2)(s, t, y)


def test_chunks_hold_less_temporary_memory():
  shape = jax.ShapeDtypeStruct((1024, 4000), jnp.float32)
  labels = jax.ShapeDtypeStruct((1024,), jnp.int32)

  def temp_bytes(fn):
    step = jax.jit(jax.value_and_grad(lambda s, t, y: fn(s, t, y).mean()))
    return step.lower(shape, shape, labels).compile().memory_analysis().temp_size_in_bytes
  for name in ("kd", "rld"):
    plain = temp_bytes(losses.get(name))
    assert temp_bytes(losses.chunked(losses.get(name), rows=64)) < plain / 3, name


@pytest.mark.parametrize("call,error,match", [
    (lambda: losses.chunked(losses.label_revision, 8), ValueError, "`loss`: label_revision"),
    (lambda: losses.chunked(losses.get("label_revision"), 8), ValueError, "`loss`: label_revision"),
    (lambda: losses.chunked(losses.kd, 0), ValueError, "`rows` must be a positive int, got 0"),
    (lambda: losses.chunked(losses.kd, 2.5), ValueError, "`rows` must be a positive int"),
    (lambda: losses.chunked(losses.kd, True), ValueError, "`rows` must be a positive int"),
    (lambda: losses.chunked(lambda s, t: losses.kd(s, t), 2), TypeError,
     "`loss`: <lambda> takes no `axis` keyword"),
    (lambda: losses.chunked(losses.ldrld, 2)(*_logits((6, 9), jnp.float32, 1)), TypeError,
     "`labels`: ldrld takes no labels"),
    (lambda: losses.chunked(losses.kd, 2)(jnp.zeros((6, 9)), jnp.zeros((6, 8))), ValueError,
     "`student_logits` and `teacher_logits` must have the same shape"),
    (lambda: losses.chunked(losses.kd, 2)(jnp.zeros((6, 9)), jnp.zeros((6, 9)), temperature=-1.0),
     ValueError, "`temperature` must be a finite number > 0"),
    (lambda: losses.chunked(losses.rld, 2)(jnp.zeros((6, 9)), jnp.zeros((6, 9)),
                                           jnp.zeros((6,), jnp.float32)),
     TypeError, "`labels` must be integer class indices"),
])
def test_bad_arguments_raise_naming_them(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_few_examples_are_one_plain_call():
  s, t, y = _logits((5, 11), jnp.float32, 1)
  np.testing.assert_array_equal(losses.chunked(losses.rld, rows=8)(s, t, y), losses.rld(s, t, y))
