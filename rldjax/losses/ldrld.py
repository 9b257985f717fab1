"""Local Dense Relational Logit Distillation (Xu et al., ICCV 2025)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rldjax.losses import _common as c
from rldjax.losses._gradients import closed_form_student_gradient
from rldjax.losses._topk import top_k_indices


@functools.lru_cache(maxsize=64)
def rank_pair_weights(k: int, irw_offset: float = 1.5, erd_scale: float = 2.0,
                      erd_rate: float = 0.05) -> np.ndarray:
  r"""The k×k table of adaptive decay weights (ADW), upper triangle only.

  For ranks :math:`i < j` counted from 0,

  .. math:: w_{ij} = \underbrace{\frac{1}{o + |i-j|}}_{\text{IRW}}\cdot
            \underbrace{s\,e^{-r\,(i + j + 2)}}_{\text{ERD}}

  with :math:`o` = ``irw_offset``, :math:`s` = ``erd_scale``, :math:`r` =
  ``erd_rate`` (the published values 1.5, 2, 0.05 give
  :math:`2/(1.5+|i-j|)\,e^{-0.05(i+j+2)}`). Entries with :math:`i \ge j` are 0.
  """
  i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  w = erd_scale / (irw_offset + np.abs(i - j)) * np.exp(-erd_rate * (i + j + 2))
  w = np.where(i < j, w, 0.0)
  w.setflags(write=False)
  return w


@functools.lru_cache(maxsize=64)
def _rank_pairs(k: int, irw_offset: float, erd_scale: float, erd_rate: float):
  """The pairs i < j as index arrays, their ADW weights, and the [P, k]
  incidence matrix D (+1 at i, -1 at j) that maps pair gaps back to ranks."""
  first, second = np.triu_indices(k, 1)
  weights = rank_pair_weights(k, irw_offset, erd_scale, erd_rate)[first, second]
  incidence = np.zeros((len(first), k))
  incidence[np.arange(len(first)), first] = 1.0
  incidence[np.arange(len(first)), second] = -1.0
  return first, second, weights, incidence


def ldrld_loss_and_grad(s, t, alpha, beta, temperature, *, k, rank_by, irw_offset,
                        erd_scale, erd_rate):
  """Rows [N, C]: (alpha * local + beta * RNTK per row, its gradient w.r.t. s)."""
  ranking = jax.lax.stop_gradient(s if rank_by == "student" else t)
  top = top_k_indices(ranking, k)  # [N, k], ranks 0..k-1
  s_top = jnp.take_along_axis(s, top, axis=-1)
  t_top = jnp.take_along_axis(t, top, axis=-1)
  num_terms = k * (k - 1) / 2 + 1
  # Every rank pair i < j as a 2-class distribution, in closed form from the
  # logit gaps: O(k^2) per row instead of one softmax over C per pair. The
  # derivative of a pair's KL in the student gap is q_t - q_s, q = sigmoid(-gap).
  first, second, weights, incidence = _rank_pairs(k, irw_offset, erd_scale, erd_rate)
  inv = 1.0 / temperature
  # A pair whose two classes both have teacher logit -inf (a teacher kept for
  # its top classes only, the rest -inf) has no teacher distribution: like a
  # class of teacher probability 0 in a KL, it adds nothing, value and
  # gradient. Both its gaps are taken as 0 (KL 0, gap gradient 0): -inf - -inf
  # made the teacher's gap, and the loss, NaN, and where the student's two
  # logits are -inf as well (classes absent in both), its gradient.
  no_teacher = (t_top[:, first] == -jnp.inf) & (t_top[:, second] == -jnp.inf)
  t_gap = jnp.where(no_teacher, 0.0, (t_top[:, first] - t_top[:, second]) * inv)
  s_gap = jnp.where(no_teacher, 0.0, (s_top[:, first] - s_top[:, second]) * inv)
  weights = jnp.asarray(weights, s.dtype)
  pairs = jnp.sum(c.binary_kl_from_logit_gaps(t_gap, s_gap) * weights, axis=-1)
  gap_grad = (jax.nn.sigmoid(-t_gap) - jax.nn.sigmoid(-s_gap)) * weights
  pairs_grad = jnp.matmul(gap_grad, jnp.asarray(incidence, s.dtype),
                          precision=jax.lax.Precision.HIGHEST) * temperature
  # The top-k set as a whole (weight 1), then the remaining classes (RNTK).
  whole, whole_grad = c.kl_and_student_grad(t_top, s_top, t_top, s_top, temperature)
  local = (pairs * temperature**2 + whole) / num_terms
  local_grad = (pairs_grad + whole_grad) / num_terms
  rest = ~c.one_hot_mask(top, s.shape[-1])
  rntk, rntk_grad = c.kl_and_student_grad(t, s, c.exclude(t, rest), c.exclude(s, rest),
                                          temperature)
  rows = jnp.arange(s.shape[0])[:, None]
  grad = (beta * rntk_grad).at[rows, top].add(alpha * local_grad)
  return alpha * local + beta * rntk, grad


@functools.lru_cache(maxsize=64)
def _ldrld_rows(k, rank_by, irw_offset, erd_scale, erd_rate):
  return closed_form_student_gradient(functools.partial(
      ldrld_loss_and_grad, k=k, rank_by=rank_by, irw_offset=irw_offset,
      erd_scale=erd_scale, erd_rate=erd_rate))


def ldrld(student_logits, teacher_logits, *, alpha: float = 10.5,
          beta: float = 7.0, k: int = 7, temperature: float = 4.0,
          rank_by: str = "student", irw_offset: float = 1.5,
          erd_scale: float = 2.0, erd_rate: float = 0.05, standardize: bool = False,
          axis: int = -1):
  r"""LDRLD, one loss per example.

  Let :math:`\pi_0, \dots, \pi_{k-1}` be the top-k classes ranked by the
  student's logits (``rank_by="teacher"``: the teacher's). With
  :math:`\sigma` the logistic function and
  :math:`\mathrm{KL}_2(a, b) = \mathrm{KL}([\sigma(a), \sigma(-a)] \| [\sigma(b), \sigma(-b)])`,
  the local dense term distils every rank pair as a 2-class distribution,

  .. math::
     \mathcal{L}_{\mathrm{local}} = \frac{T^2}{k(k-1)/2 + 1}\Big(
       \sum_{i<j} w_{ij}\,\mathrm{KL}_2\big(\tfrac{z^t_{\pi_i} - z^t_{\pi_j}}{T},
       \tfrac{z^s_{\pi_i} - z^s_{\pi_j}}{T}\big)
       + \mathrm{KL}\big(\mathrm{softmax}_{\pi}(z^t/T)\,\|\,\mathrm{softmax}_{\pi}(z^s/T)\big)\Big)

  with the rank-pair weights :math:`w_{ij}` of :func:`rank_pair_weights`
  (inverse rank weighting × exponential rank decay). The remaining non-target
  knowledge term is the KL over the classes outside the top-k, renormalised
  exactly over them:

  .. math:: \mathcal{L}_{\mathrm{RNTK}} = T^2\,\mathrm{KL}\big(
            \mathrm{softmax}_{\bar\pi}(z^t/T)\,\|\,\mathrm{softmax}_{\bar\pi}(z^s/T)\big)

  and the loss is :math:`\alpha\,\mathcal{L}_{\mathrm{local}} + \beta\,\mathcal{L}_{\mathrm{RNTK}}`.
  The cost is one top-k, one masked softmax over C and O(k²) per example.
  The student gradient is computed in closed form behind a ``jax.custom_jvp``
  (each pair's KL has derivative :math:`\sigma(-d_t) - \sigma(-d_s)` in the
  student gap, the top-k set and RNTK terms :math:`T(p^s - p^t)` on their
  classes); teacher and hyperparameter gradients,
  forward mode and Hessians go through ordinary autodiff. The top-k runs in
  two short stages over blocks of classes (exactly ``lax.top_k``'s indices),
  which matters for vocabulary-sized class axes.

  Args:
    student_logits, teacher_logits: float arrays ``[..., C, ...]``.
    alpha: local dense weight, >= 0.  beta: RNTK weight, >= 0.
    k: top-k size, 2 <= k < C.
    temperature: T > 0.
    rank_by: "student" (published default) or "teacher".
    irw_offset, erd_scale, erd_rate: the rank-pair weight constants.
    standardize: logit standardisation of both logits first (not in the
      published LDRLD code; off by default).
    axis: the class axis.

  Returns:
    Per-example losses in >= float32.
  """
  axis = c.check_pair(student_logits, teacher_logits, axis)
  num_classes = student_logits.shape[axis]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise TypeError(f"`k` must be a Python int, got {k!r}.")
  if not 2 <= k < num_classes:
    raise ValueError(f"`k` must satisfy 2 <= k < number of classes ({num_classes}), got {k}.")
  if rank_by not in ("student", "teacher"):
    raise ValueError(f"`rank_by` must be 'student' or 'teacher', got {rank_by!r}.")
  c.check_nonnegative("alpha", alpha)
  c.check_nonnegative("beta", beta)
  c.check_positive("temperature", temperature)
  for name, value in (("irw_offset", irw_offset), ("erd_scale", erd_scale),
                      ("erd_rate", erd_rate)):
    c.check_nonnegative(name, value)
  c.check_positive("irw_offset", irw_offset)
  k = int(k)

  loss_rows = _ldrld_rows(k, rank_by, float(irw_offset), float(erd_scale), float(erd_rate))

  def rows(s, t, _):
    return loss_rows(s, t, alpha, beta, temperature)

  return c.per_example(rows, student_logits, teacher_logits, None, axis, standardize)
