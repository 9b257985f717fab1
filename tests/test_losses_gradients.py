"""rld's and ldrld's hand-derived gradients, and the blocked top-k ldrld uses.

Both losses give their student gradient in closed form behind a
``jax.custom_jvp`` (``rldjax/losses/_gradients.py``); every other argument
(teacher logits, hyperparameters) is differentiated by ordinary autodiff of
the same forward code. These tests check both paths against float64 central
differences of the independent NumPy references, and check forward mode,
Hessians and vmap against reverse mode.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.losses import naive_ldrld
from rldjax import losses
from rldjax.losses._topk import block_size, top_k_indices
from tests import numpy_reference as R

# Many small programs: compiled with less optimisation (conftest.py says why).
pytestmark = pytest.mark.usefixtures("less_optimized_compilation")

ATOL, RTOL = 1e-5, 1e-4


# --------------------------------------------------------------------------
# Blocked top-k: the same indices as lax.top_k, ties and all.
# --------------------------------------------------------------------------

def _rows(kind, n, num_classes, seed):
  rng = np.random.default_rng(seed)
  if kind == "normal":
    return (3 * rng.standard_normal((n, num_classes))).astype(np.float32)
  if kind == "ties":  # only four distinct values: ties everywhere, also at rank k
    return rng.integers(0, 4, (n, num_classes)).astype(np.float32)
  if kind == "padded_vocab":  # -inf entries, as for padded vocabularies
    x = rng.standard_normal((n, num_classes)).astype(np.float32)
    x[:, rng.random(num_classes) < 0.3] = -np.inf
    x[0] = -np.inf  # a whole row of -inf
    return x
  if kind == "constant":
    return np.full((n, num_classes), 2.5, np.float32)
  raise KeyError(kind)


@pytest.mark.parametrize("num_classes, k", [(100, 7), (1000, 7), (1003, 7), (5000, 2),
                                            (5000, 20), (32000, 7)])
@pytest.mark.parametrize("kind", ["normal", "ties", "padded_vocab", "constant"])
def test_top_k_indices_equal_lax_top_k(num_classes, k, kind):
  x = _rows(kind, 6, num_classes, seed=num_classes + k)
  expected = np.asarray(jax.lax.top_k(x, k)[1])
  np.testing.assert_array_equal(np.asarray(jax.jit(top_k_indices, static_argnums=1)(x, k)),
                                expected)


def test_top_k_block_sizes():
  assert block_size(100, 7) is None  # one stage: too few classes to gain
  assert block_size(1000, 7) == 16  # ~sqrt(C / k), a power of two
  assert block_size(32000, 7) == 64
  assert block_size(1003, 7) == 16  # not a multiple: the tail joins stage 2
  assert block_size(10**6, 2) == 256  # capped


# --------------------------------------------------------------------------
# Gradients against float64 central differences of the NumPy references.
# --------------------------------------------------------------------------

def _separated(seed, shape=(4, 12)):
  """Logits whose entries differ by >= 0.25 per row, so that a finite
  difference step never changes a mask, a top-1 or a ranking."""
  rng = np.random.default_rng(seed)
  rows = [rng.permutation(shape[-1]) * 0.5 - 3.0 for _ in range(shape[0])]
  x = np.stack(rows) + rng.uniform(-0.1, 0.1, shape)
  return x.astype(np.float32)


def _numeric_grad(f, x, h=1e-5):
  """Central differences of the float64 scalar f at x (float64)."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (f(up) - f(down)) / (2 * h)
  return grad


def _assert_close(actual, ref, what):
  actual = np.asarray(actual, np.float64)
  bound = ATOL + RTOL * np.abs(ref)
  err = np.abs(actual - ref)
  assert (err <= bound).all(), f"{what}: worst |diff|/bound = {np.max(err / bound):.3g}"


def _rld_reference(alpha, beta, T, a_T, standardize):
  def total(s, t, y):
    if standardize:
      s, t = R.standardize(s), R.standardize(t)
    scd, mcd = R.rld_terms(s, t, y, T, a_T)
    return np.sum(alpha * scd + beta * mcd)
  return total


@pytest.mark.parametrize("a_T, standardize", [(4.0, False), (2.0, False), (4.0, True)])
def test_rld_gradients_match_float64_differences(a_T, standardize):
  s, t = _separated(1), _separated(2)
  y = np.array([0, 5, 11, 7], np.int32)
  y[0] = int(np.argmax(t[0]))  # one row where the teacher is right
  hp = dict(alpha=1.5, beta=8.0, temperature=4.0, confidence_temperature=a_T,
            standardize=standardize)
  total = lambda s, t: jnp.sum(losses.rld(s, t, y, **hp))
  g_s, g_t = jax.jit(jax.grad(total, argnums=(0, 1)))(s, t)
  ref = _rld_reference(1.5, 8.0, 4.0, a_T, standardize)
  _assert_close(g_s, _numeric_grad(lambda x: ref(x, t, y), s), "d/d student")
  _assert_close(g_t, _numeric_grad(lambda x: ref(s, x, y), t), "d/d teacher")


# (loss with the temperature as its one argument, the NumPy reference's
# summed value at that temperature), for the losses' temperatures.
def _temperature_cases(padded=False):
  s, t = _separated(20), _separated(21)
  y = np.array([0, 5, 11, 7], np.int32)
  y[0] = int(np.argmax(t[0]))  # one row where the teacher is right
  # The references divide by T before they convert to float64: give them
  # float64 logits, or float32 rounding of z/T swamps the differences.
  s64, t64, y_ref = s.astype(np.float64), t.astype(np.float64), y.copy()
  if padded:  # the losses see a vocabulary padded with -inf; the references do not
    pad = np.full((s.shape[0], 3), -np.inf, np.float32)
    s, t = np.concatenate([pad, s], 1), np.concatenate([pad, t], 1)
    y = y + 3
  dkd_ref = lambda T: R.dkd_terms(s64, t64, y_ref, T)
  rld_ref = lambda T, a_T: R.rld_terms(s64, t64, y_ref, T, a_T)
  ldrld_ref = lambda T: R.ldrld_terms(s64, t64, T, 5)
  return {
      "kd": (lambda T: losses.kd(s, t, temperature=T), lambda T: R.kd(s64, t64, T)),
      "dkd": (lambda T: losses.dkd(s, t, y, alpha=1.5, beta=8.0, temperature=T),
              lambda T: 1.5 * dkd_ref(T)[0] + 8.0 * dkd_ref(T)[1]),
      "rld temperature": (
          lambda T: losses.rld(s, t, y, alpha=1.5, beta=8.0, temperature=T,
                               confidence_temperature=2.0),
          lambda T: 1.5 * rld_ref(T, 2.0)[0] + 8.0 * rld_ref(T, 2.0)[1]),
      "rld confidence_temperature": (
          lambda T: losses.rld(s, t, y, alpha=1.5, beta=8.0, temperature=4.0,
                               confidence_temperature=T),
          lambda T: 1.5 * rld_ref(4.0, T)[0] + 8.0 * rld_ref(4.0, T)[1]),
      "ldrld": (lambda T: losses.ldrld(s, t, alpha=10.5, beta=7.0, k=5, temperature=T),
                lambda T: 10.5 * ldrld_ref(T)[0] + 7.0 * ldrld_ref(T)[1]),
      "swap_kd": (lambda T: losses.swap_kd(s, t, y, temperature=T),
                  lambda T: R.swap_kd(s64, t64, y_ref, T)),
      "rc": (lambda T: losses.rc(s, t, y, temperature=T), lambda T: R.rc(s64, y_ref, T)),
  }


@pytest.mark.parametrize("padded", [False, True], ids=["", "padded"])
@pytest.mark.parametrize("case", list(_temperature_cases()))
def test_gradient_with_respect_to_a_traced_temperature(case, padded):
  """d/dT of each loss (a learned temperature) against float64 central
  differences of the NumPy reference, also with the vocabulary padded with
  -inf. The excluded classes of the masked softmaxes (exp(-inf / T)) made it
  NaN for dkd, rld and ldrld, and -inf logits (-inf / T) for kd, swap_kd
  and rc too."""
  loss, ref = _temperature_cases(padded)[case]
  grad = jax.jit(jax.grad(lambda T: jnp.sum(loss(T))))  # one program for both temperatures
  for T in (4.0, 1.5):
    got = grad(T)
    h = 1e-5
    expected = (np.sum(ref(T + h)) - np.sum(ref(T - h))) / (2 * h)
    _assert_close(got, expected, f"{case}{' padded' if padded else ''}: d/dT at T={T}")


@pytest.mark.parametrize("rank_by", ["student", "teacher"])
def test_ldrld_gradients_match_float64_differences(rank_by):
  s, t = _separated(3), _separated(4)
  hp = dict(alpha=10.5, beta=7.0, k=5, temperature=3.0, rank_by=rank_by)
  total = lambda s, t: jnp.sum(losses.ldrld(s, t, **hp))
  g_s, g_t = jax.jit(jax.grad(total, argnums=(0, 1)))(s, t)

  def ref(s, t):
    local, rntk = R.ldrld_terms(s, t, 3.0, 5, rank_by)
    return np.sum(10.5 * local + 7.0 * rntk)

  _assert_close(g_s, _numeric_grad(lambda x: ref(x, t), s), "d/d student")
  _assert_close(g_t, _numeric_grad(lambda x: ref(s, x), t), "d/d teacher")


_KEPT_TEACHER_CASES = {  # (loss(s, t, y), its float64 NumPy reference summed)
    "kd": (lambda s, t, y: losses.kd(s, t), lambda s, t, y: np.sum(R.kd(s, t, 4.0))),
    "dkd": (lambda s, t, y: losses.dkd(s, t, y),
            lambda s, t, y: np.sum(np.array(R.dkd_terms(s, t, y, 4.0)) * [[1.0], [8.0]])),
    "rld": (lambda s, t, y: losses.rld(s, t, y),
            lambda s, t, y: np.sum(np.array(R.rld_terms(s, t, y, 4.0, 4.0)) * [[1.0], [8.0]])),
    "ldrld": (lambda s, t, y: losses.ldrld(s, t, k=5),
              lambda s, t, y: np.sum(np.array(R.ldrld_terms(s, t, 4.0, 5)) * [[10.5], [7.0]])),
    "ldrld(rank_by=teacher)": (
        lambda s, t, y: losses.ldrld(s, t, k=5, rank_by="teacher"),
        lambda s, t, y: np.sum(np.array(R.ldrld_terms(s, t, 4.0, 5, "teacher"))
                               * [[10.5], [7.0]])),
    "swap_kd": (lambda s, t, y: losses.swap_kd(s, t, y),
                lambda s, t, y: np.sum(R.swap_kd(s, t, y, 4.0))),
}


@pytest.mark.parametrize("name", _KEPT_TEACHER_CASES)
def test_gradients_with_a_teacher_kept_for_its_top_classes_alone(name):
  """A teacher whose logits are -inf outside its top 3 (a student finite
  everywhere), labels inside and outside them: both gradients against float64
  central differences of the NumPy reference (the teacher's at its finite
  logits), and exactly 0 with respect to the teacher's -inf logits. It was
  NaN there for rld and ldrld (an operand of -max/2 in their KL overflowed to
  -inf in the backward pass, times a zero probability), and the losses of
  dkd, rld and ldrld were NaN or wrong (tests/test_losses_properties.py)."""
  s, t = _separated(16), _separated(17)
  order = np.argsort(-t, axis=-1)
  masked = np.zeros(t.shape, bool)
  np.put_along_axis(masked, order[:, 3:], True, axis=-1)
  t[masked] = -np.inf
  y = order[np.arange(4), [0, 2, 3, 8]].astype(np.int32)  # teacher ranks 0, 2, 3, 8
  loss, ref = _KEPT_TEACHER_CASES[name]
  total = lambda s, t: jnp.sum(loss(s, t, y))
  g_s, g_t = jax.jit(jax.grad(total, argnums=(0, 1)))(s, t)
  with np.errstate(invalid="ignore", divide="ignore"):  # -inf - -inf in the reference
    _assert_close(g_s, _numeric_grad(lambda x: ref(x, t, y), s), "d/d student")
    expected_t = _numeric_grad(lambda x: ref(s, np.where(masked, -np.inf, x), y),
                               np.where(masked, 0.0, t))
  g_t = np.asarray(g_t)
  assert (g_t[masked] == 0).all(), g_t[masked]
  _assert_close(g_t[~masked], expected_t[~masked], "d/d teacher")


def test_ldrld_with_classes_absent_in_both_among_the_teachers_top_k():
  """Ranked by a teacher kept for 3 classes, k = 7 reaches classes that are
  -inf in the student too (absent in both): pairs of two such classes add
  nothing. Value against float64 NumPy, both gradients against float64
  differences at the finite logits and 0 at the -inf ones (the student's
  gradient was NaN: such a pair's student gap is -inf - -inf)."""
  s, t = _separated(18), _separated(19)
  t[:, 3:] = -np.inf  # the teacher keeps classes 0-2; ranked by it, top-7 = 0..6
  s[:, 5:] = -np.inf  # classes 5 and 6 of the top 7 are absent in both
  hp = dict(k=7, rank_by="teacher")
  total = lambda s, t: jnp.sum(losses.ldrld(s, t, **hp))

  def ref(s, t):
    local, rntk = R.ldrld_terms(s, t, 4.0, 7, "teacher")
    return np.sum(10.5 * local + 7.0 * rntk)

  with np.errstate(invalid="ignore", divide="ignore"):  # -inf - -inf in the reference
    np.testing.assert_allclose(jax.jit(total)(s, t), ref(s, t), rtol=1e-5)
    g_s, g_t = (np.asarray(g) for g in jax.jit(jax.grad(total, argnums=(0, 1)))(s, t))
    for got, x, other, is_student in ((g_s, s, t, True), (g_t, t, s, False)):
      masked = np.isneginf(x)
      assert (got[masked] == 0).all(), got[masked]
      f = (lambda v: ref(np.where(masked, -np.inf, v), other)) if is_student else (
          lambda v: ref(other, np.where(masked, -np.inf, v)))
      expected = _numeric_grad(f, np.where(masked, 0.0, x))
      _assert_close(got[~masked], expected[~masked], "d/d student" if is_student else "d/d teacher")


def test_ldrld_on_a_large_class_axis_matches_brute_force():
  """C = 1000 takes the blocked top-k; values against float64 NumPy, both
  gradients against autodiff of the brute-force formulation (one masked
  softmax over C per pair: the benchmark's naive baseline)."""
  rng = np.random.default_rng(5)
  s = (3 * rng.standard_normal((8, 1000))).astype(np.float32)
  t = (3 * rng.standard_normal((8, 1000))).astype(np.float32)
  assert block_size(1000, 7) is not None
  fast = lambda s, t: losses.ldrld(s, t, k=7)
  plain = lambda s, t: naive_ldrld(s, t, k=7, temperature=4.0, alpha=10.5, beta=7.0)
  local, rntk = R.ldrld_terms(s, t, 4.0, 7)
  def values_and_grads(f):  # one program: the per-example values and the gradients of their sum
    def total(s, t):
      values = f(s, t)
      return jnp.sum(values), values
    (_, values), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(s, t)
    return values, grads
  values, got = values_and_grads(fast)
  np.testing.assert_allclose(values, 10.5 * local + 7.0 * rntk, rtol=1e-4, atol=1e-5)
  _, want = values_and_grads(plain)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# Other transformations through the custom JVP.
# --------------------------------------------------------------------------

LOSSES = {
    "rld": lambda s, t, y, beta: losses.rld(s, t, y, beta=beta, confidence_temperature=2.0),
    "ldrld": lambda s, t, y, beta: losses.ldrld(s, t, beta=beta, k=4),
}


@pytest.mark.parametrize("name", LOSSES)
def test_forward_mode_equals_reverse_mode(name):
  s, t = _separated(6), _separated(7)
  y = np.array([1, 2, 3, 4], np.int32)
  v = np.random.default_rng(8).standard_normal(s.shape).astype(np.float32)
  total = lambda s, t: jnp.sum(LOSSES[name](s, t, y, 8.0))

  @jax.jit  # one program (three took ~2x as long to compile)
  def both_modes(s, t):
    return (jax.grad(total, argnums=(0, 1))(s, t),
            jax.jvp(lambda x: total(x, t), (s,), (v,))[1],
            jax.jvp(lambda x: total(s, x), (t,), (v,))[1])
  (g_s, g_t), along_s, along_t = both_modes(s, t)
  np.testing.assert_allclose(along_s, jnp.sum(g_s * v), rtol=1e-5)
  np.testing.assert_allclose(along_t, jnp.sum(g_t * v), rtol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_hessian_matches_differences_of_the_gradient(name):
  """jax.hessian (forward over reverse) through the custom JVP, in float64,
  against central differences of the (separately checked) gradient."""
  with jax.enable_x64(True):
    s, t = _separated(9).astype(np.float64), _separated(10).astype(np.float64)
    y = np.array([1, 2, 3, 4], np.int32)
    v = np.random.default_rng(11).standard_normal(s.shape)
    total = lambda x: jnp.sum(LOSSES[name](x, t, y, 8.0))
    hess = jax.jit(jax.hessian(total))(s)
    assert hess.dtype == jnp.float64
    grad = jax.jit(jax.grad(total))
    h = 1e-4
    expected = (grad(s + h * v) - grad(s - h * v)) / (2 * h)
    np.testing.assert_allclose(jnp.einsum("ijkl,kl->ij", hess, v), expected, rtol=1e-6,
                               atol=1e-8)


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_with_respect_to_a_traced_weight(name):
  """d/d beta of sum(alpha * A + beta * B) is sum(B)."""
  s, t = _separated(12), _separated(13)
  y = np.array([1, 2, 3, 4], np.int32)
  d_beta = jax.jit(jax.grad(lambda b: jnp.sum(LOSSES[name](s, t, y, b))))(8.0)
  if name == "rld":
    only_b = losses.rld(s, t, y, alpha=0.0, beta=1.0, confidence_temperature=2.0)
  else:
    only_b = losses.ldrld(s, t, alpha=0.0, beta=1.0, k=4)
  np.testing.assert_allclose(d_beta, jnp.sum(only_b), rtol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_per_example_gradients_under_vmap(name):
  s, t = _separated(14), _separated(15)
  y = np.array([1, 2, 3, 4], np.int32)
  batch = jax.jit(jax.grad(lambda s: jnp.sum(LOSSES[name](s, t, y, 8.0))))(s)
  one = lambda a, b, c: LOSSES[name](a[None], b[None], c[None], 8.0)[0]
  per_row = jax.jit(jax.vmap(jax.grad(one)))(s, t, y)
  np.testing.assert_allclose(per_row, batch, rtol=1e-6, atol=1e-8)
