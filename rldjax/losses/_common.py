"""Shared building blocks of the distillation losses.

Everything here is a pure function on arrays whose class axis is the last one
and whose leading dims have been flattened to one batch axis (see
:func:`as_rows`). Masked softmaxes are exact: masked-out classes are removed
from the normaliser, never pushed down by a large negative constant.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------
# Validation (runs at trace time: shapes, dtypes and Python hyperparameters).
# --------------------------------------------------------------------------

def compute_dtype(*arrays) -> jnp.dtype:
  """At least float32: bf16/f16 inputs are upcast, f64 stays f64."""
  dtype = jnp.result_type(*arrays)
  return jnp.promote_types(dtype, jnp.float32)


def check_logits(name: str, logits) -> None:
  if not hasattr(logits, "shape") or not hasattr(logits, "dtype"):
    raise TypeError(f"`{name}` must be an array, got {type(logits).__name__}.")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"`{name}` must be floating point (bf16, f16, f32 or f64), "
                    f"got dtype {logits.dtype}.")
  if logits.ndim < 1:
    raise ValueError(f"`{name}` must have a class axis, got a scalar.")


def check_pair(student_logits, teacher_logits, axis: int) -> int:
  """Checks a student/teacher pair; returns the normalised class axis."""
  check_logits("student_logits", student_logits)
  check_logits("teacher_logits", teacher_logits)
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
        "`student_logits` and `teacher_logits` must have the same shape, got "
        f"{student_logits.shape} and {teacher_logits.shape}.")
  ndim = student_logits.ndim
  if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
    raise ValueError(f"`axis` must be an int in [{-ndim}, {ndim}), got {axis!r}.")
  axis = int(axis) % ndim
  if student_logits.shape[axis] < 2:
    raise ValueError("the class axis of `student_logits` must hold at least 2 "
                     f"classes, got shape {student_logits.shape} (axis={axis}).")
  return axis


def check_labels(labels, logits_shape: Sequence[int], axis: int) -> None:
  if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
    raise TypeError(f"`labels` must be an integer array, got {type(labels).__name__}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"`labels` must be integer class indices, got dtype {labels.dtype}.")
  expected = tuple(logits_shape[:axis]) + tuple(logits_shape[axis + 1:])
  if tuple(labels.shape) != expected:
    raise ValueError(f"`labels` must have the logits' shape without the class axis, "
                     f"{expected}, got {tuple(labels.shape)}.")
  if isinstance(labels, jax.core.Tracer):
    return  # values unknown at trace time: out-of-range examples give NaN (per_example)
  num_classes = logits_shape[axis]
  values = np.asarray(labels)
  bad = (values < 0) | (values >= num_classes)
  if bad.any():
    raise ValueError(f"`labels` must lie in [0, {num_classes}) (the class axis has {num_classes} "
                     f"classes); got {bad.sum()} outside, e.g. {values[bad].ravel()[:5].tolist()}.")


def check_bool(name: str, value) -> None:
  """A Python switch: ``True``/``False`` only (a string such as "no" would be truthy)."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def valid_labels(y, num_classes: int):
  """Rows whose label lies in [0, num_classes)."""
  return (y >= 0) & (y < num_classes)


def _concrete_number(name: str, value):
  """The value as a Python float, or None when it is traced (unknowable)."""
  if isinstance(value, (bool, str, bytes)):
    raise TypeError(f"`{name}` must be a number, got {value!r}.")
  try:
    return float(value)
  except jax.errors.ConcretizationTypeError:
    return None
  except (TypeError, ValueError):
    raise TypeError(f"`{name}` must be a number, got {value!r}.") from None


def check_positive(name: str, value) -> None:
  v = _concrete_number(name, value)
  if v is not None and (not math.isfinite(v) or v <= 0):
    raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def check_nonnegative(name: str, value) -> None:
  v = _concrete_number(name, value)
  if v is not None and (not math.isfinite(v) or v < 0):
    raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


# --------------------------------------------------------------------------
# Layout: any leading dims and any class axis -> rows [N, C] and back.
# --------------------------------------------------------------------------

def as_rows(x, axis: int, dtype=None):
  """Moves the class axis last and flattens the rest: [..., C] -> [N, C]."""
  x = jnp.moveaxis(x, axis, -1)
  if dtype is not None:
    x = x.astype(dtype)
  return x.reshape((-1, x.shape[-1]))


def batch_shape(shape: Sequence[int], axis: int) -> tuple[int, ...]:
  return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def runtime_values(*arrays):
  """``arrays``, the concrete ones made opaque to XLA's constant folding.

  Arrays that a jitted function closes over are constants of its program
  (concrete inside it, not tracers), and XLA evaluates what depends on them
  alone while compiling, slowly: closed-over labels made dkd's value and
  gradient at 1024 x 32000 compile in 101 s (its non-target mask over every
  class, and reductions of it), against 1.2 s with the labels as an
  argument; closed-over teacher logits of 256 x 32000, 15-78 s for kd, rld,
  swap_kd and label_revision (their softmaxes). Same values, nothing to do
  at run time; traced arrays (arguments) pass as they are."""
  return tuple(x if x is None or isinstance(x, jax.core.Tracer)
               else jax.lax.optimization_barrier(x) for x in arrays)


def explicit_axes(*arrays) -> tuple[str, ...]:
  """The mesh axes of type ``jax.sharding.AxisType.Explicit`` in the arrays'
  types, in mesh order (``()`` for arrays outside explicit sharding)."""
  names = []
  for x in arrays:
    if x is None:
      continue
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    if mesh is None or mesh.empty:
      continue
    for name, kind in zip(mesh.axis_names, mesh.axis_types):
      if kind == jax.sharding.AxisType.Explicit and name not in names:
        names.append(name)
  return tuple(names)


def on_auto_axes(fn: Callable, arrays, out_specs: Callable):
  """``fn(*arrays)``, with every Explicit mesh axis of the arrays turned Auto
  inside ``fn`` (``jax.sharding.auto_axes``): XLA's partitioner places the
  gathers, scatters, top-k and concatenations of the losses, which explicit
  sharding refuses (a sharded class axis, or operands of other shardings),
  and the result is resharded to
  ``out_specs()`` (a PartitionSpec, or a pytree of them, for ``fn``'s
  result). Outside explicit sharding, a plain call."""
  axes = explicit_axes(*arrays)
  if not axes:
    return fn(*arrays)
  mesh = next(jax.typeof(x).sharding.mesh for x in arrays
              if x is not None and explicit_axes(x))
  out = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), out_specs(),
                     is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return jax.sharding.auto_axes(fn, axes=axes, out_sharding=out)(*arrays)


def batch_spec(logits, axis: int) -> jax.sharding.PartitionSpec:
  """The PartitionSpec of ``logits``' batch dims (its own without ``axis``)."""
  spec = tuple(jax.typeof(logits).sharding.spec)
  spec = spec + (None,) * (logits.ndim - len(spec))
  return jax.sharding.PartitionSpec(*(spec[:axis] + spec[axis + 1:]))


def per_example(fn: Callable, student_logits, teacher_logits, labels, axis: int,
                standardize: bool):
  """Runs ``fn(s_rows, t_rows, label_rows)`` on [N, C] rows in >= f32 and
  reshapes its [N] result to the logits' batch shape.

  Under explicit sharding (``jax.sharding.AxisType.Explicit`` mesh axes in
  the logits' types, as ``jax.make_mesh`` makes by default) the rows are
  computed on Auto axes and the result is sharded as the student logits'
  batch dims."""
  check_bool("standardize", standardize)
  return on_auto_axes(
      lambda s, t, y: _per_example(fn, s, t, y, axis, standardize),
      runtime_values(student_logits, teacher_logits, labels),
      lambda: batch_spec(student_logits, axis))


def _per_example(fn, student_logits, teacher_logits, labels, axis, standardize):
  dtype = compute_dtype(student_logits, teacher_logits)
  out_shape = batch_shape(student_logits.shape, axis)
  s = as_rows(student_logits, axis, dtype)
  t = as_rows(teacher_logits, axis, dtype)
  if standardize:
    s, t = standardize_logits(s), standardize_logits(t)
  if labels is None:
    return fn(s, t, None).reshape(out_shape)
  y = labels.reshape((-1,)).astype(jnp.int32)
  # A label outside [0, C) (only possible under tracing; eager calls raise in
  # check_labels) makes that example's loss NaN, never a finite number.
  valid = valid_labels(y, s.shape[-1])
  loss = fn(s, t, jnp.where(valid, y, 0))
  return jnp.where(valid, loss, jnp.nan).reshape(out_shape)


# --------------------------------------------------------------------------
# Math.
# --------------------------------------------------------------------------

def standardize_logits(z, axis: int = -1):
  """Logit standardisation (Sun et al., CVPR 2024): (z - mean) / (1e-7 + std),
  std unbiased (ddof=1), as in the published code.

  Classes whose logit is -inf (absent, as padded vocabulary entries) stay
  -inf and are left out of the mean and std, so standardising logits padded
  with -inf gives the standardised unpadded logits, padded with -inf.

  A row whose logits are all equal (a zero-initialised classifier head) has
  std 0, where the square root has no derivative. As PyTorch's ``std``
  backward does there, the std contributes no gradient, so the row's gradient
  is ``(g - mean(g)) / 1e-7`` for an upstream gradient ``g``: finite (large),
  not NaN.
  """
  out_dtype = z.dtype
  z = z.astype(compute_dtype(z))  # bf16 counts and sums would round
  absent = z == -jnp.inf
  count = jnp.sum(~absent, axis=axis, keepdims=True).astype(z.dtype)
  mean = jnp.sum(jnp.where(absent, 0.0, z), axis=axis, keepdims=True) / count
  centered = jnp.where(absent, 0.0, z - mean)
  var = jnp.sum(centered * centered, axis=axis, keepdims=True) / (count - 1.0)
  spread = var > 0
  std = jnp.where(spread, jnp.sqrt(jnp.where(spread, var, 1.0)), 0.0)
  return jnp.where(absent, -jnp.inf, centered / (1e-7 + std)).astype(out_dtype)


def scale_present(z, scale: Callable, temperature):
  """``scale(z)``, a division or product by ``temperature`` (or its inverse),
  with every -inf entry (an absent class) left -inf and out of the
  temperature's gradient: there the derivative in the temperature,
  -inf · 0, would make a traced (learned) temperature's gradient NaN. Same
  values, bit for bit. A Python number has no derivative: ``scale(z)`` as
  it is (the selects cost dkd's value and gradient 1.27x at 1024 x 32000)."""
  if isinstance(temperature, (int, float)):
    return scale(z)
  absent = z == -jnp.inf
  return jnp.where(absent, -jnp.inf, scale(jnp.where(absent, 0.0, z)))


def masked_log_softmax(z, mask):
  """log softmax over the classes in ``mask`` (last axis), as ``z - m - log
  sum_mask exp(z - m)`` with ``m`` the maximum over the mask.

  Entries outside the mask are that same expression (finite for finite
  logits: no NaN is computed there); callers exclude them. Shifting by the
  maximum first keeps full accuracy at any magnitude: n equal logits of -1e9
  (a class set masked with a large finite negative) give exactly log(1/n),
  where ``z - logsumexp(z)`` lost everything to rounding. A row without a
  logit other than -inf in the mask (an empty mask, or a teacher that gives
  every class there probability 0) is -inf on the mask.
  """
  m = jnp.max(jnp.where(mask, z, -jnp.inf), axis=-1, keepdims=True)
  some = m != -jnp.inf  # NaN counts: it must propagate
  shifted = z - jax.lax.stop_gradient(jnp.where(some, m, 0.0))
  total = jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, shifted, 0.0)), 0.0), axis=-1,
                  keepdims=True)
  return shifted - jnp.log(jnp.where(some, total, 1.0))


def masked_kl(teacher_scaled, student_scaled, mask=None):
  """KL(softmax_mask(t) || softmax_mask(s)) over the last axis.

  Both distributions are renormalised over the classes in ``mask`` (all
  classes if None). Rows whose mask is empty, or whose teacher logits are all
  -inf on it (no teacher distribution there), give exactly 0 with zero
  gradient.
  """
  if mask is None:
    log_pt = jax.nn.log_softmax(teacher_scaled, axis=-1)
    log_ps = jax.nn.log_softmax(student_scaled, axis=-1)
    return jnp.sum(teacher_weighted(jnp.exp(log_pt), log_pt - log_ps), axis=-1)
  log_pt = masked_log_softmax(teacher_scaled, mask)
  log_ps = masked_log_softmax(student_scaled, mask)
  terms = teacher_weighted(jnp.exp(jnp.where(mask, log_pt, -jnp.inf)), log_pt - log_ps)
  return jnp.sum(terms, axis=-1)


def teacher_weighted(weight, value):
  """``weight * value`` where the teacher's weight is > 0, exactly 0 where it is 0.

  A class of teacher probability 0 (a logit of -inf, or an excluded class)
  adds nothing to a KL whatever the student's value there, which may be
  undefined (``-inf - (-inf)`` where both logits are -inf, as for padded
  vocabulary entries). Where the weight is positive this is the product
  itself, so finite inputs give the same values, and the ``where`` keeps the
  gradient free of ``0 * nan``.
  """
  return weight * jnp.where(weight > 0, value, 0.0)


def binary_kl_from_logit_gaps(teacher_gap, student_gap):
  r"""KL between the 2-class softmaxes of logit pairs, from their gaps z_i - z_j.

  A 2-class softmax is :math:`[p, q] = [\sigma(d), \sigma(-d)]`, with
  :math:`\log \sigma(d) = -\mathrm{softplus}(-d)`, so

  .. math:: \mathrm{KL} = p_t\,\big(\mathrm{softplus}(-d_s)
            - \mathrm{softplus}(-d_t)\big) + q_t\,\big(\mathrm{softplus}(d_s)
            - \mathrm{softplus}(d_t)\big),

  each term 0 where its teacher probability is 0. O(1) per pair instead of a
  softmax over all classes; its derivative in the student gap is
  :math:`\sigma(-d_t) - \sigma(-d_s)`. Where the gaps are close
  (:math:`|\delta| = |d_t - d_s| \le 1`) the two terms cancel, and the
  equivalent form :math:`\log(1 + q_t\,(e^\delta - 1)) - q_t\,\delta`
  keeps full relative accuracy (the KL is second order in :math:`\delta`).

  Any magnitude: a class masked with ``-inf``, ``-1e9`` or ``finfo.min`` in
  one model alone (a gap of that size) gives the KL of the probabilities as
  computed, +inf where the student gives probability 0 to a class of teacher
  probability > 0, and a NaN gap gives NaN. (The Bregman form used before,
  :math:`\mathrm{softplus}(-d_s) - \mathrm{softplus}(-d_t) - q_t\,\delta`,
  cancelled two terms of size :math:`|d_t|` for large negative teacher gaps:
  errors up to 1e24 at :math:`d_t = -10^9/T`, NaN at infinite gaps.)
  """
  q_t = jax.nn.sigmoid(-teacher_gap)
  delta = teacher_gap - student_gap
  near = jnp.abs(delta) <= 1.0
  small = jnp.where(near, delta, 0.0)
  close = jnp.log1p(q_t * jnp.expm1(small)) - q_t * small

  def term(prob_t, gap_t, gap_s):  # prob_t * (softplus(-gap_s) - softplus(-gap_t))
    # 0 where prob_t is 0, with finite operands there, so that neither the
    # value nor a gradient is 0 * inf.
    absent = prob_t == 0
    gap_t, gap_s = jnp.where(absent, 0.0, gap_t), jnp.where(absent, 0.0, gap_s)
    return jnp.where(absent, 0.0,
                     prob_t * (jax.nn.softplus(-gap_s) - jax.nn.softplus(-gap_t)))

  far = (term(jax.nn.sigmoid(teacher_gap), teacher_gap, student_gap)
         + term(q_t, -teacher_gap, -student_gap))
  return jnp.where(near, close, far)


def one_hot_mask(index, num_classes: int):
  """Boolean [N, C] mask with True at ``index`` [N] or at every ``index`` [N, k]."""
  if index.ndim == 1:
    index = index[:, None]
  rows = jnp.arange(index.shape[0])[:, None]
  return jnp.zeros((index.shape[0], num_classes), bool).at[rows, index].set(True)


# --------------------------------------------------------------------------
# Masked softmaxes with closed-form student gradients (KD, swap_kd, RC, RLD, LDRLD).
# Excluded classes are set to -inf, and exp(-inf) = 0 exactly: they leave the
# normaliser and get exactly zero probability and gradient. Temperatures are
# applied inside the exponentials, so no scaled copy of the logits is made.
# --------------------------------------------------------------------------

def exclude(x, keep):
  """``x`` where ``keep``, -inf elsewhere."""
  return jnp.where(keep, x, -jnp.inf)


def shifted_exp(kept, inv_temperature):
  """Unnormalised softmax of ``kept / T`` over its finite entries.

  Returns ``(m, e, total, nonempty)``, all but ``e`` of shape [N, 1]: ``m`` is
  the row maximum (0 where every entry is excluded), ``e = exp((kept - m) / T)``
  (0 at excluded entries; the largest kept entry gives exactly 1, so no
  magnitude overflows or underflows the normaliser), ``total`` is ``sum(e)``
  (1 for empty rows) and ``nonempty`` says whether anything is kept. The log
  normaliser is ``m / T + log(total)``.
  """
  m = jnp.max(kept, axis=-1, keepdims=True)
  nonempty = m != -jnp.inf  # NaN counts as non-empty: it must propagate
  m = jax.lax.stop_gradient(jnp.where(nonempty, m, 0.0))
  e = jnp.exp(scale_present(kept - m, lambda z: z * inv_temperature, inv_temperature))
  total = jnp.sum(e, axis=-1, keepdims=True)
  return m, e, jnp.where(nonempty, total, 1.0), nonempty


# Logit maxima (over a KL's class set) beyond which kl_and_student_grad shifts
# the logits by them before it takes their differences.
SHIFT_ABOVE = 1024.0


def kl_and_student_grad(teacher, student, teacher_kept, student_kept, temperature):
  r"""Temperature-scaled KL over a class subset K, and its student gradient.

  .. math::
     \ell = T^2\,\mathrm{KL}\big(\mathrm{softmax}_K(z^t/T)\,\|\,
            \mathrm{softmax}_K(z^s/T)\big),\qquad
     \frac{\partial \ell}{\partial z^s_c} = T\,(p^s_c - p^t_c)\,[c \in K]

  with the KL evaluated as
  :math:`\mathbb{E}_{p^t}[((z^t - m_t) - (z^s - m_s))/T] - \log Z^t + \log Z^s`,
  :math:`m` the maxima over K and :math:`Z` the sums of :math:`e^{(z - m)/T}`
  over K (the shifts by :math:`m` taken only where they matter, below).

  Args:
    teacher, student: logit rows [N, C] (unscaled).
    teacher_kept, student_kept: the same rows with the classes outside K set
      to -inf (:func:`exclude`).
    temperature: T > 0.

  Returns:
    ``(loss [N], grad [N, C])``; rows with an empty K, or whose teacher
    logits are all -inf on K (no teacher distribution there), give exactly 0
    and a zero gradient.
  """
  inv = 1.0 / temperature
  m_t, e_t, z_t, nonempty = shifted_exp(teacher_kept, inv)
  m_s, e_s, z_s, _ = shifted_exp(student_kept, inv)
  # KL = sum_K p_t ((t - a) - (s - b)) / T + ((m_s - b) - (m_t - a)) / T
  #      - log Z_t + log Z_s for any shifts a, b. With a = b = 0 (the plain
  # form) the logits' differences round at their own magnitude, and a
  # teacher whose classes in K all hold the same -1e9 came out as rounding
  # garbage (4103 for an RLD loss of 62.4); with a = m_t, b = m_s they enter
  # relative to their maxima over K, exact there. The shifted form made XLA:CPU's value and
  # gradient at 1024 x 32000 1.11x (rld) and 1.26x (ldrld) as long, so a
  # batch takes it only where some maximum exceeds SHIFT_ABOVE in magnitude
  # (a conditional: the plain form's absolute error below is ~1e-4 / T).
  # A class the teacher excludes (outside K, or a logit of -inf) has e_t = 0
  # and must add nothing, but the difference is -inf - -inf = NaN where both
  # logits are -inf (a padded vocabulary). Both sides are clamped at -2**100
  # first: no class of teacher probability > 0 lies that far below m_t, the
  # difference is then 0 or finite, and the teacher's gradient there,
  # e_t' * diff * (its cotangent), is 0: with -max/2 the product overflowed
  # to -inf for a teacher logit of -inf alone, and 0 * -inf made it NaN.
  # (A select here made XLA:CPU materialise the difference: LDRLD's value and
  # gradient at 1024 x 32000 took 1.2x as long; the clamps fuse.)
  floor = -(2.0 ** 100)

  def cross(a, b):
    diff = jnp.maximum(teacher - a, floor) - jnp.maximum(student - b, floor)
    return (jnp.sum(e_t * diff, axis=-1, keepdims=True) * inv / z_t
            + ((m_s - b) - (m_t - a)) * inv)

  large = lambda m: jnp.any(jnp.abs(m) > SHIFT_ABOVE)  # NaN is not: it propagates either way
  kl = jax.lax.cond(large(m_t) | large(m_s), lambda: cross(m_t, m_s),
                    lambda: cross(jnp.zeros_like(m_t), jnp.zeros_like(m_s)))
  kl = kl - jnp.log(z_t) + jnp.log(z_s)
  # A class in K of teacher probability > 0 where the student's logit is -inf:
  # the KL is +inf (the clamp alone would give a large finite number). The
  # probability as computed: a teacher masked with a large finite negative
  # (finfo.min, as much code masks) and a student masked with -inf match,
  # as they do in kd and dkd.
  unreachable = jnp.any((student_kept == -jnp.inf) & (e_t > 0), axis=-1, keepdims=True)
  kl = jnp.where(unreachable, jnp.inf, kl)
  loss = jnp.where(nonempty, kl, 0.0)[:, 0] * temperature**2
  # `nonempty` is the teacher's: where it gives every class in K probability
  # 0 (its logits there all -inf) the loss is 0, and so is its gradient.
  grad = jnp.where(nonempty, e_s / z_s - e_t / z_t, 0.0) * temperature
  return loss, grad


def target_gap(z, index, inv_temperature):
  """Binary logit of class ``index`` [N] per row: log p - log(1 - p) of softmax(z / T).

  The gap is
  ``z_target / T - logsumexp_{c != target}(z_c / T)``, exact for any magnitude.
  Returns ``(gap [N], others [N, C])`` with ``others`` the softmax over the
  non-target classes (0 at the target): ``d gap / d z = (onehot - others) / T``.
  """
  others = jnp.arange(z.shape[-1]) != index[:, None]
  m, e, total, some = shifted_exp(exclude(z, others), inv_temperature)
  # No other class (all -inf: a teacher that keeps only the target) is a gap
  # of +inf, p = 1 (it was z_target / T).
  lse_others = jnp.where(some, m * inv_temperature + jnp.log(total), -jnp.inf)[:, 0]
  chosen = jnp.take_along_axis(z, index[:, None], axis=-1)[:, 0] * inv_temperature
  return chosen - lse_others, e / total


def top1_gap(z, inv_temperature):
  """Binary logit of each row's top-1 class, log p_max - log(1 - p_max).

  Found without an argmax: with m the row maximum, the other classes are
  those below m plus the ties at m but one, so
  ``gap = m / T - logaddexp(logsumexp_{z_c < m}(z_c / T), m / T + log(ties))``.
  Without ties this is, operation for operation, :func:`target_gap` at the
  argmax, so the two agree bit for bit when the label is the top-1 class.
  """
  m = jnp.max(z, axis=-1, keepdims=True)
  below = z < m
  m_below, _, total, nonempty = shifted_exp(exclude(z, below), inv_temperature)
  lse_below = jnp.where(nonempty, m_below * inv_temperature + jnp.log(total), -jnp.inf)
  ties = jnp.sum(~below, axis=-1, keepdims=True) - 1
  lse_ties = jnp.where(ties > 0, m * inv_temperature
                       + jnp.log(jnp.maximum(ties, 1).astype(z.dtype)), -jnp.inf)
  return (m * inv_temperature - jnp.logaddexp(lse_below, lse_ties))[:, 0]
