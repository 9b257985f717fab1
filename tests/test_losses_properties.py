"""Properties of rldjax.losses: invariances, edge cases, dtypes, layouts,
large magnitudes against float64 NumPy, and trace-time errors."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rldjax import losses
from tests import numpy_reference as R

# Many small programs: compiled with less optimisation (conftest.py says why).
pytestmark = pytest.mark.usefixtures("less_optimized_compilation")

B, C = 6, 12
PER_EXAMPLE = ["kd", "dkd", "rld", "ldrld", "swap_kd", "rc"]
# rc's target adds the row maximum to the true class, so it moves with a shift.
SHIFT_INVARIANT = ["kd", "dkd", "rld", "ldrld", "swap_kd"]
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


def sample(seed, scale=3.0, shape=(B, C), dtype=np.float32):
  rng = np.random.default_rng(seed)
  s = (scale * rng.standard_normal(shape)).astype(dtype)
  t = (scale * rng.standard_normal(shape)).astype(dtype)
  y = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
  return s, t, y


@functools.lru_cache(maxsize=None)
def jitted(name, **hp):
  fn = losses.get(name)
  return jax.jit(lambda s, t, y: fn(s, t, y, **hp))


def call(name, s, t, y, **hp):
  return np.asarray(jitted(name, **hp)(s, t, y))


def reference(name, s, t, y, T=4.0):
  if name == "kd":
    return R.kd(s, t, T)
  if name == "dkd":
    tckd, nckd = R.dkd_terms(s, t, y, T)
    return tckd + 8 * nckd
  if name == "rld":
    scd, mcd = R.rld_terms(s, t, y, T, T)
    return scd + 8 * mcd
  if name == "ldrld":
    local, rntk = R.ldrld_terms(s, t, T, 7)
    return 10.5 * local + 7 * rntk
  if name == "swap_kd":
    return R.swap_kd(s, t, y, T)
  if name == "rc":
    return R.rc(s, y, T)
  raise KeyError(name)


@pytest.mark.parametrize("name", SHIFT_INVARIANT)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(-50, 50))
def test_shift_invariance(name, seed, shift):
  s, t, y = sample(seed)
  base = call(name, s, t, y)
  moved = call(name, s + np.float32(shift), t - np.float32(shift), y)
  np.testing.assert_allclose(moved, base, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", PER_EXAMPLE)
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_matches_float64_numpy_and_is_nonnegative(name, seed):
  s, t, y = sample(seed)
  out = call(name, s, t, y)
  assert out.shape == (B,) and out.dtype == np.float32
  np.testing.assert_allclose(out, reference(name, s, t, y), rtol=1e-4, atol=1e-5)
  assert (out >= -1e-6).all()


@pytest.mark.parametrize("name", ["kd", "ldrld", "dkd", "rld", "swap_kd"])
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_zero_when_student_equals_teacher(name, seed):
  s, _, y = sample(seed)
  if name in ("rld", "swap_kd"):
    # SCD compares the teacher's top-1 with the student's true class, and the
    # swap changes a wrong teacher: both vanish where the label is the top-1.
    y = np.argmax(s, -1).astype(np.int32)
  np.testing.assert_allclose(call(name, s, s, y), 0.0, atol=1e-6)


def test_rc_is_positive_for_an_unboosted_student():
  s, t, y = sample(0)
  assert (call("rc", s, t, y) > 0).all()


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_rank_by_semantics(seed):
  s, t, _ = sample(seed)
  by_student = call("ldrld", s, t, None, rank_by="student")
  by_teacher = call("ldrld", s, t, None, rank_by="teacher")
  np.testing.assert_allclose(by_student, 10.5 * R.ldrld_terms(s, t, 4.0, 7, "student")[0]
                             + 7 * R.ldrld_terms(s, t, 4.0, 7, "student")[1], rtol=1e-4)
  np.testing.assert_allclose(by_teacher, 10.5 * R.ldrld_terms(s, t, 4.0, 7, "teacher")[0]
                             + 7 * R.ldrld_terms(s, t, 4.0, 7, "teacher")[1], rtol=1e-4)
  # Ranking by the teacher equals ranking by the student when the two agree on
  # the order: give the student the teacher's ordering.
  same_order = np.take_along_axis(np.sort(s, -1), np.argsort(np.argsort(t, -1), -1), -1)
  np.testing.assert_allclose(call("ldrld", same_order, t, None, rank_by="student"),
                             call("ldrld", same_order, t, None, rank_by="teacher"), rtol=1e-6)


@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_bf16_inputs_close_to_f32(name):
  # Well-separated logits (gaps of 0.25 > bf16's resolution here), so that the
  # rounding cannot create ties that move RLD's mask or LDRLD's top-k.
  rng = np.random.default_rng(3)
  s = np.stack([rng.permutation(C) * 0.25 - 1.5 for _ in range(B)]).astype(np.float32)
  t = np.stack([rng.permutation(C) * 0.25 - 1.5 for _ in range(B)]).astype(np.float32)
  s += rng.uniform(-0.01, 0.01, s.shape).astype(np.float32)
  t += rng.uniform(-0.01, 0.01, t.shape).astype(np.float32)
  y = rng.integers(0, C, B).astype(np.int32)
  s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  out16 = call(name, s16, t16, y)
  assert out16.dtype == np.float32  # computed and returned in >= f32
  # Only the inputs are rounded (8 mantissa bits): compare with f32 on the
  # same rounded inputs exactly, and with the unrounded f32 inputs loosely.
  same_inputs = call(name, np.asarray(s16, np.float32), np.asarray(t16, np.float32), y)
  np.testing.assert_allclose(out16, same_inputs, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out16, call(name, s, t, y), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_leading_dims_and_axis(name):
  s, t, y = sample(4, shape=(2, 3, C))
  flat = call(name, s.reshape(6, C), t.reshape(6, C), y.reshape(6))
  out3d = call(name, s, t, y)
  assert out3d.shape == (2, 3)
  np.testing.assert_allclose(out3d, flat.reshape(2, 3), rtol=1e-6)
  moved = np.asarray(jax.jit(lambda s, t, y: losses.get(name)(s, t, y, axis=1))(
      np.moveaxis(s, -1, 1), np.moveaxis(t, -1, 1), y))
  np.testing.assert_allclose(moved, out3d, rtol=1e-6)


@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_vmap_and_grad_agree_with_batch(name):
  s, t, y = sample(5)
  fn = losses.get(name)

  @jax.jit  # one program (eager, each operation was compiled apart: ~500 programs)
  def batched_single_and_grad(s, t, y):
    single = jax.vmap(lambda a, b, c: fn(a[None], b[None], c[None])[0])(s, t, y)
    return fn(s, t, y), single, jax.grad(lambda a: jnp.sum(fn(a, t, y)))(s)
  batched, single, grad = batched_single_and_grad(s, t, y)
  np.testing.assert_allclose(single, batched, rtol=1e-6)
  assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_large_magnitude_logits(name):
  """Logits of magnitude 1e4 with ties: finite, and equal to float64 NumPy."""
  rng = np.random.default_rng(7)
  s = (1e4 * rng.standard_normal((B, C))).astype(np.float32)
  t = (1e4 * rng.standard_normal((B, C))).astype(np.float32)
  t[:, 3] = t[:, 5]  # ties in the teacher
  s[:, 1] = s[:, 2]  # ties in the student
  y = rng.integers(0, C, B).astype(np.int32)
  y[0] = 3  # the label tied with another teacher class
  out = call(name, s, t, y)
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out, reference(name, s, t, y), rtol=1e-4, atol=1e-3)
  grad = jax.grad(lambda a: jnp.sum(losses.get(name)(a, t, y)))(jnp.asarray(s))
  assert np.isfinite(np.asarray(grad)).all()


def test_rld_all_classes_dropped_is_exactly_zero():
  s, t, _ = sample(8)
  y = np.argmin(t, -1).astype(np.int32)  # every class >= the true class
  mcd = lambda a: losses.rld(a, t, y, alpha=0.0, beta=1.0)
  assert (np.asarray(jax.jit(mcd)(s)) == 0.0).all()
  grad = jax.grad(lambda a: jnp.sum(mcd(a)))(jnp.asarray(s))
  assert (np.asarray(grad) == 0.0).all()


def test_dkd_and_rld_coincide_when_teacher_is_right():
  """With the teacher right, RLD's masks reduce to DKD-like terms: SCD equals
  TCKD and MCD is the KL over the classes below the true class."""
  s, t, y = sample(9)
  y = np.argmax(t, -1).astype(np.int32)
  np.testing.assert_allclose(losses.rld(s, t, y, alpha=1.0, beta=0.0),
                             losses.dkd(s, t, y, alpha=1.0, beta=0.0), rtol=1e-6)
  np.testing.assert_allclose(losses.rld(s, t, y, alpha=0.0, beta=1.0),
                             losses.dkd(s, t, y, alpha=0.0, beta=1.0), rtol=1e-5)


def test_rank_pair_weights_table():
  w = losses.rank_pair_weights(4)
  assert w.shape == (4, 4)
  assert w[0, 1] == pytest.approx(2 / 2.5 * np.exp(-0.05 * 3))
  assert w[1, 3] == pytest.approx(2 / 3.5 * np.exp(-0.05 * 6))
  assert (np.tril(w) == 0).all()


def test_label_revision_matches_numpy_and_handles_empty_subsets():
  s, t, y = sample(10)
  np.testing.assert_allclose(losses.label_revision(s, t, y), R.label_revision(s, t, y),
                             rtol=1e-5)
  right = np.argmax(t, -1).astype(np.int32)
  np.testing.assert_allclose(losses.label_revision(s, t, right), R.label_revision(s, t, right),
                             rtol=1e-5)
  wrong = ((right + 1) % C).astype(np.int32)
  np.testing.assert_allclose(losses.label_revision(s, t, wrong), R.label_revision(s, t, wrong),
                             rtol=1e-5)


def test_registry():
  assert set(losses.names()) == {"kd", "dkd", "rld", "ldrld", "swap_kd", "rc",
                                 "label_revision"}
  with pytest.raises(KeyError, match="unknown loss 'nope'"):
    losses.get("nope")
  s, t, y = sample(11)
  np.testing.assert_allclose(losses.get("kd")(s, t, y, temperature=2.0),
                             losses.kd(s, t, temperature=2.0))


@pytest.mark.parametrize("call_, match", [
    (lambda s, t, y: losses.kd(s, t[:, :-1]), "same shape"),
    (lambda s, t, y: losses.kd(s.astype(np.int32), t), "student_logits.*floating"),
    (lambda s, t, y: losses.kd(s, t.astype(np.int32)), "teacher_logits.*floating"),
    (lambda s, t, y: losses.kd(s, t, temperature=0.0), "temperature"),
    (lambda s, t, y: losses.kd(s, t, temperature=-1.0), "temperature"),
    (lambda s, t, y: losses.kd(s, t, axis=3), "axis"),
    (lambda s, t, y: losses.dkd(s, t, y[:-1]), "labels"),
    (lambda s, t, y: losses.dkd(s, t, y.astype(np.float32)), "labels"),
    (lambda s, t, y: losses.dkd(s, t, y, beta=-1.0), "beta"),
    (lambda s, t, y: losses.rld(s, t, y, confidence_temperature=0.0), "confidence_temperature"),
    (lambda s, t, y: losses.ldrld(s, t, k=1), "`k`"),
    (lambda s, t, y: losses.ldrld(s, t, k=C), "`k`"),
    (lambda s, t, y: losses.ldrld(s, t, k=2.5), "`k`"),
    (lambda s, t, y: losses.ldrld(s, t, rank_by="both"), "rank_by"),
    (lambda s, t, y: losses.ldrld(s, t, k=3, temperature=0.0), "temperature"),
    (lambda s, t, y: losses.label_revision(s, t, y, eta=-1.0), "eta"),
    (lambda s, t, y: losses.dkd(s, t, y, alpha="1"), "`alpha` must be a number"),
    (lambda s, t, y: losses.kd(s, t, temperature="4"), "`temperature` must be a number"),
    (lambda s, t, y: losses.rld(s, t, y, standardize="no"), "`standardize` must be True or False"),
    (lambda s, t, y: losses.ldrld(s, t, standardize=1), "`standardize` must be True or False"),
])
def test_bad_input_raises_at_trace_time(call_, match):
  s, t, y = sample(12)
  with pytest.raises((ValueError, TypeError), match=match):
    jax.jit(call_)(s, t, y)


def test_traced_temperature_is_allowed():
  s, t, y = sample(13)
  out = jax.jit(lambda T: losses.kd(s, t, temperature=T))(2.0)
  np.testing.assert_allclose(out, losses.kd(s, t, temperature=2.0), rtol=1e-6)


def pad_with_minus_inf(arrays, labels, num_padded, seed):
  """Inserts ``num_padded`` classes of logit -inf at random positions of each
  row (the same positions in every array, never the label's class).

  Returns the padded arrays and the labels' new positions.
  """
  rng = np.random.default_rng(seed)
  rows, classes = arrays[0].shape
  width = classes + num_padded
  padded = [np.full((rows, width), -np.inf, a.dtype) for a in arrays]
  new_labels = np.empty_like(labels)
  for i in range(rows):
    kept = np.sort(rng.choice(width, classes, replace=False))
    for out, a in zip(padded, arrays):
      out[i, kept] = a[i]
    new_labels[i] = kept[labels[i]]
  return padded, new_labels


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_classes_whose_logits_are_minus_inf_in_both_are_absent(name, dtype, standardize):
  """A padded vocabulary: -inf at the same classes of the student and the
  teacher gives the loss and gradients of the logits without those classes
  (was NaN: 0 * (-inf - -inf) in every KL)."""
  s, t, y = sample(11, shape=(B, C))
  s, t = s.astype(dtype), t.astype(dtype)
  (s_pad, t_pad), y_pad = pad_with_minus_inf([s, t], y, num_padded=5, seed=12)
  absent = np.isneginf(np.asarray(s_pad, np.float32))
  fn = losses.get(name)
  hp = dict(standardize=standardize)

  def values_and_grads(a, b, labels):
    """Per-example values and the gradients of their sum w.r.t. the student
    and the teacher logits."""
    values, vjp = jax.vjp(lambda a, b: fn(a, b, labels, **hp), a, b)
    return (values, *vjp(jnp.ones_like(values)))

  # One program for the padded and the unpadded logits (two programs took
  # 15-25% longer to compile; each value and gradient apart, twice as long).
  (out, *grads_pad), (unpadded, *grads_un) = jax.jit(
      lambda padded, plain: (values_and_grads(*padded), values_and_grads(*plain)))(
          (jnp.asarray(s_pad), jnp.asarray(t_pad), y_pad), (jnp.asarray(s), jnp.asarray(t), y))
  out, unpadded = np.asarray(out), np.asarray(unpadded)
  assert out.dtype == np.float32 and np.isfinite(out).all()
  np.testing.assert_allclose(out, unpadded, rtol=1e-5, atol=1e-6)
  # An independent float64 reference on the unpadded logits.
  s64, t64 = np.asarray(s, np.float64), np.asarray(t, np.float64)
  if standardize:
    s64, t64 = R.standardize(s64), R.standardize(t64)
  np.testing.assert_allclose(out, reference(name, s64, t64, y), rtol=1e-4, atol=1e-5)
  for grad_pad, expected in zip(grads_pad, grads_un):  # student, teacher
    assert grad_pad.dtype == expected.dtype == dtype
    grad_pad, expected = np.asarray(grad_pad, np.float32), np.asarray(expected, np.float32)
    assert (grad_pad[absent] == 0).all()
    np.testing.assert_allclose(grad_pad[~absent].reshape(B, C), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_standardize_on_a_constant_student_row_has_pytorchs_gradient(name):
  """All-equal student logits (a zero-initialised head) have std 0, where the
  square root has no derivative. PyTorch's std backward gives 0 there, so the
  published code's gradient is (g - mean(g)) / 1e-7 with g the gradient with
  respect to the standardised logits (all 0); here it was NaN."""
  _, t, y = sample(13)
  s = np.zeros_like(t)
  s[1] = 2.5  # another constant row
  fn = losses.get(name)
  grad = np.asarray(jax.jit(jax.grad(
      lambda a: jnp.sum(fn(a, t, y, standardize=True))))(jnp.asarray(s)), np.float64)
  assert np.isfinite(grad).all()
  # Reference: the gradient at the standardised logits (a zero row, and the
  # teacher standardised in float64), projected and divided by 1e-7.
  t_std = jnp.asarray(R.standardize(t), jnp.float32)
  g = np.asarray(jax.grad(lambda a: jnp.sum(fn(a, t_std, y)))(jnp.zeros_like(t_std)),
                 np.float64)
  expected = (g - g.mean(-1, keepdims=True)) / 1e-7
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  # PyTorch: the published normalize(), back-propagating the same g.
  torch = pytest.importorskip("torch", reason="the torch extra is not installed")
  z = torch.tensor(s, dtype=torch.float64, requires_grad=True)
  standardized = (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))
  (torch_grad,) = torch.autograd.grad((standardized * torch.tensor(g)).sum(), z)
  np.testing.assert_allclose(torch_grad.numpy(), expected, rtol=1e-12, atol=1e-6)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("name, which", [
    (name, which) for name in PER_EXAMPLE + ["label_revision"]
    for which in ("student", "teacher")
    if (name, which) != ("rc", "teacher")])  # rc does not read the teacher's logits
def test_a_nan_or_inf_logit_never_gives_a_finite_loss(name, which, value):
  """Row i holds the bad value at class i, so every position is tried: the
  label, the teacher's top-1, LDRLD's top-k and the rest. RLD with such a
  student logit and LDRLD with such a teacher logit gave finite losses for
  some rows: a row maximum of NaN or +inf was taken for an empty row."""
  side = 0 if which == "student" else 1
  if name == "label_revision":  # a batch scalar: one bad entry at a time
    for i in (0, 5, 11):
      logits = list(sample(14, shape=(C, C)))
      logits[side][i, i] = value
      assert not np.isfinite(call(name, *logits))
    return
  logits = list(sample(14, shape=(C, C)))
  for i in range(C):
    logits[side][i, i] = value
  out = call(name, *logits)
  assert not np.isfinite(out).any(), out


@pytest.mark.parametrize("at", ["every class", "the label"])
@pytest.mark.parametrize("name", ["kd", "dkd", "rld", "ldrld", "swap_kd"])
def test_a_class_of_minus_inf_in_the_student_alone(name, at):
  """The teacher gives the class probability, the student none: the KL is
  +inf, and where the method drops the class (RLD's masked-correlation term),
  the loss stays finite; both as the float64 NumPy reference. At the label,
  dkd's and rld's binary terms gave NaN (inf - inf)."""
  s, t, y = sample(15, shape=(C, C))
  s[np.arange(C), y if at == "the label" else (np.arange(C) + 3) % C] = -np.inf
  out = call(name, s, t, y)
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
    expected = reference(name, s, t, y)
  assert np.isposinf(expected).any()
  np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))
  finite = np.isfinite(expected)
  np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-4, atol=1e-5)


def test_standardize_logits_of_a_bf16_vocabulary_is_computed_in_float32():
  """bf16 cannot count 151936 classes (nor sum their logits): the mean and
  std are taken in float32 and the result returned in bf16."""
  rng = np.random.default_rng(16)
  z = jnp.asarray(rng.standard_normal((4, 151936)) + 100.0, jnp.bfloat16)
  out = losses.standardize_logits(z)
  assert out.dtype == jnp.bfloat16
  z64 = np.asarray(z, np.float64)
  expected = (z64 - z64.mean(-1, keepdims=True)) / (1e-7 + z64.std(-1, ddof=1, keepdims=True))
  # bf16 resolution of values up to ~5: 2**-5.
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=2**-5)


@pytest.mark.parametrize("fill", [-1e9, float(np.finfo(np.float32).min)])
@pytest.mark.parametrize("masked_with_minus_inf", ["student", "teacher"])
@pytest.mark.parametrize("name", PER_EXAMPLE)
def test_padding_masked_with_minus_inf_on_one_side_and_a_large_negative_on_the_other(
    name, masked_with_minus_inf, fill):
  """Models from different code mask padding differently (-inf, or
  finfo.min as much code does): either way the padded classes have
  probability 0 on both sides and the loss is the unpadded one. RLD and LDRLD
  gave +inf when the student's padding was -inf and the teacher's finite.
  (A finite logit is a present class: where the teacher ranks the true class
  below every real class, RLD's masked-correlation set would hold only the
  padding; the labels here avoid that.)"""
  s, t, _ = sample(17, shape=(B, C))
  y = np.argsort(t, axis=-1)[:, C // 2].astype(np.int32)  # the teacher's middle class
  (s_pad, t_pad), y_pad = pad_with_minus_inf([s, t], y, num_padded=5, seed=18)
  finite_side = t_pad if masked_with_minus_inf == "student" else s_pad
  finite_side[np.isneginf(finite_side)] = fill
  np.testing.assert_allclose(call(name, s_pad, t_pad, y_pad), call(name, s, t, y),
                             rtol=1e-5, atol=1e-6)


def teacher_kept_for_its_top(t, kept, fill):
  """The teacher's logits with all but each row's ``kept`` largest set to
  ``fill``, and labels at the teacher's ranks 0, 1, 2, 5, 9 and 11 (inside
  and outside the kept classes)."""
  order = np.argsort(-t, axis=-1, kind="stable")
  t = t.copy()
  for i in range(t.shape[0]):
    t[i, order[i, kept:]] = fill
  y = order[np.arange(t.shape[0]), [0, 1, 2, 5, 9, 11]].astype(np.int32)
  return t, y


@pytest.mark.parametrize("fill", [-np.inf, -1e9, float(np.finfo(np.float32).min)])
@pytest.mark.parametrize("kept", [1, 2, 4, 8])
@pytest.mark.parametrize("name", PER_EXAMPLE + ["ldrld(rank_by=teacher)"])
def test_a_teacher_kept_for_its_top_classes_alone(name, kept, fill):
  """Token-level distillation often stores the teacher's top classes only,
  the rest -inf (or a large finite negative), while the student's logits are
  all finite: the teacher gives those classes probability 0, and a class set
  where it gives none a probability (RLD's masked-correlation set below a
  true class it ranks last, an LDRLD pair, DKD's non-target classes of a
  one-class teacher) has no teacher distribution and adds nothing (finite
  masks are present classes: uniform there). The float64 NumPy reference
  agrees. dkd, rld and ldrld gave NaN with -inf, and with -1e9 or finfo.min
  values off by up to 1e24: their binary KLs and masked softmaxes cancelled
  terms of size 1e9 / T."""
  s, t, _ = sample(21)
  t, y = teacher_kept_for_its_top(t, kept, fill)
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # -inf - -inf
    if name == "ldrld(rank_by=teacher)":
      out = np.asarray(jax.jit(lambda s, t: losses.ldrld(s, t, rank_by="teacher"))(s, t))
      local, rntk = R.ldrld_terms(s, t, 4.0, 7, rank_by="teacher")
      expected = 10.5 * local + 7 * rntk
    else:
      out = call(name, s, t, y)
      expected = reference(name, s, t, y)
  assert np.isfinite(expected).all()
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_binary_kl_from_logit_gaps_at_any_magnitude():
  """The 2-class KL from logit gaps against float64 log-probabilities, for
  teacher and student gaps from 0 to +-inf (a class masked in one model
  alone): finite where the teacher's probable classes are reachable, +inf
  where the student gives one of them probability 0, 0 where the two agree
  on a masked class, NaN from a NaN gap. The Bregman form returned NaN at
  infinite gaps and rounding garbage (up to 1e24) at gaps of -1e9."""
  from rldjax.losses._common import binary_kl_from_logit_gaps
  values = np.array([-np.inf, -1e30, -1e9, -60.0, -30.0, -17.0, -16.0, -5.0, -0.3, 0.0,
                     0.3, 5.0, 16.0, 17.0, 30.0, 60.0, 1e9, 1e30, np.inf])
  d_t, d_s = (a.ravel() for a in np.meshgrid(values, values, indexing="ij"))
  out = np.asarray(jax.jit(binary_kl_from_logit_gaps)(d_t.astype(np.float32),
                                                      d_s.astype(np.float32)), np.float64)

  def log_sigmoid(d):
    return -np.logaddexp(0.0, -d)

  with np.errstate(invalid="ignore", over="ignore"):
    expected = np.zeros_like(d_t)
    for sign in (1.0, -1.0):  # the class of the gap, then the other one
      log_p_t, log_p_s = log_sigmoid(sign * d_t), log_sigmoid(sign * d_s)
      expected += np.where(np.exp(log_p_t) > 0, np.exp(log_p_t) * (log_p_t - log_p_s), 0.0)
  np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))
  assert np.isfinite(out[np.isfinite(expected)]).all()
  finite = np.isfinite(expected)
  np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-5, atol=1e-6)
  assert (out[finite] >= 0).all()
  nan_gap = np.asarray(binary_kl_from_logit_gaps(jnp.array([np.nan, 1.0]),
                                                 jnp.array([1.0, np.nan])))
  assert np.isnan(nan_gap).all()


@pytest.mark.parametrize("closed_over", ["labels", "teacher"])
@pytest.mark.parametrize("name", PER_EXAMPLE + ["label_revision", "chunked(rld)"])
def test_arrays_closed_over_by_jit_are_not_folded_into_class_sized_constants(name, closed_over):
  """Arrays a jitted function closes over are constants of its program, and
  XLA folded what depends on them alone into more constants while compiling
  (dkd's non-target mask from closed-over labels, the teacher's softmaxes):
  dkd's value and gradient at 1024 x 32000 compiled in 101 s, kd, rld,
  swap_kd and label_revision's at 256 x 32000 with the teacher closed over in
  15-78 s, against ~1 s with arguments. The compiled program holds no
  constant of C or more elements but the closed-over teacher logits."""
  rng = np.random.default_rng(1)
  n, num_classes = 64, 4096
  s, t = (jnp.asarray(rng.standard_normal((n, num_classes)), jnp.float32) for _ in range(2))
  y = jnp.asarray(rng.integers(0, num_classes, n), jnp.int32)
  loss = (losses.chunked(losses.rld, rows=16) if name == "chunked(rld)" else losses.get(name))
  if closed_over == "labels":
    step = jax.jit(jax.value_and_grad(lambda s, t: jnp.mean(loss(s, t, y))))
    args, allowed = (s, t), 0
  else:
    step = jax.jit(jax.value_and_grad(lambda s, y: jnp.mean(loss(s, t, y))))
    args, allowed = (s, y), 1
  hlo = step.lower(*args).compile().as_text()
  shapes = re.findall(r"= \w+\[([0-9,]+)\]\{[^}]*\} constant\(", hlo)
  sizes = [int(np.prod([int(d) for d in shape.split(",")])) for shape in shapes]
  assert sum(size >= num_classes for size in sizes) <= allowed, sorted(sizes)[-4:]
