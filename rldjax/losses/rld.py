"""Refined Logit Distillation (Sun et al., ICCV 2025)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rldjax.losses import _common as c
from rldjax.losses._gradients import closed_form_student_gradient


def rld_loss_and_grad(s, t, y, alpha, beta, temperature, confidence_temperature):
  """Rows [N, C]: (alpha * SCD + beta * MCD per row, its gradient w.r.t. s)."""
  inv_a = 1.0 / confidence_temperature
  # Sample confidence: the teacher's top-1 confidence vs the student's
  # true-class confidence, each as a binary [p, 1 - p] distribution at T_a,
  # compared through their binary logits (gaps).
  s_gap, s_others = c.target_gap(s, y, inv_a)
  t_gap = c.top1_gap(t, inv_a)
  scd = c.binary_kl_from_logit_gaps(t_gap, s_gap) * confidence_temperature**2
  # d SCD / d s_gap = T_a^2 (q_t - q_s) with q = sigmoid(-gap), and
  # d s_gap / d s = (onehot(y) - s_others) / T_a.
  q_t = jax.nn.sigmoid(-t_gap)
  q_s = jax.nn.sigmoid(-s_gap)
  target = jnp.arange(s.shape[-1]) == y[:, None]
  scd_grad = (((q_t - q_s) * confidence_temperature)[:, None]
              * jnp.where(target, 1.0, -s_others))
  # Masked correlation: drop every class the teacher ranks at or above the
  # true class (the true class included); match the rest. The label is
  # excluded explicitly as well: under jit, XLA may recompute the
  # (standardised) true-class logit in another fusion and round it
  # differently from the same entry of `t`.
  true_logit = jnp.take_along_axis(t, y[:, None], axis=-1)
  keep = (t < true_logit) & ~target
  mcd, mcd_grad = c.kl_and_student_grad(t, s, c.exclude(t, keep), c.exclude(s, keep),
                                        temperature)
  return alpha * scd + beta * mcd, alpha * scd_grad + beta * mcd_grad


_rld_rows = closed_form_student_gradient(rld_loss_and_grad)


def rld(student_logits, teacher_logits, labels, *, alpha: float = 1.0,
        beta: float = 8.0, temperature: float = 4.0,
        confidence_temperature: float | None = None, standardize: bool = False,
        axis: int = -1):
  r"""Refined Logit Distillation, one loss per example.

  Sample-confidence distillation (SCD), at temperature :math:`T_a`: with
  :math:`m = \arg\max_c z^t_c`, :math:`p = \mathrm{softmax}(z/T_a)`,

  .. math:: \mathrm{SCD} = T_a^2\,\mathrm{KL}\big([p^t_m, 1-p^t_m]\,\|\,[p^s_y, 1-p^s_y]\big)

  Masked-correlation distillation (MCD): with
  :math:`K = \{c : z^t_c < z^t_y\}` (every class the teacher ranks at or above
  the true class, the true class included, is dropped) and the softmax
  renormalised exactly over :math:`K`,

  .. math:: \mathrm{MCD} = T^2\,\mathrm{KL}\big(\mathrm{softmax}_K(z^t/T)\,\|\,
            \mathrm{softmax}_K(z^s/T)\big)

  which is exactly 0 (with zero gradient) when :math:`K` is empty. The loss is
  :math:`\alpha\,\mathrm{SCD} + \beta\,\mathrm{MCD}`.

  The binary distributions are compared through their logit gaps
  (:func:`~rldjax.losses._common.binary_kl_from_logit_gaps`), and the student
  gradient is computed in closed form behind a ``jax.custom_jvp``: for MCD
  :math:`\beta T (p^s_K - p^t_K)`, for SCD :math:`\alpha T_a (q^t - q^s)` at the
  true class and :math:`\alpha T_a (q^s - q^t)` times the softmax over the
  other classes elsewhere (:math:`q = 1 - p`). Teacher and hyperparameter
  gradients, forward mode and Hessians go through ordinary autodiff.

  Args:
    student_logits, teacher_logits: float arrays ``[..., C, ...]``.
    labels: integer class indices, the logits' shape without ``axis``. A label
      outside ``[0, C)`` raises ``ValueError`` naming ``labels`` in an eager
      call; under ``jit``/``grad`` tracing (values unknown) that example's
      loss is NaN instead, never a finite number.
    alpha: SCD weight, >= 0.  beta: MCD weight, >= 0.
    temperature: T > 0 of the MCD term.
    confidence_temperature: :math:`T_a` > 0 of the SCD term; None uses
      ``temperature``, as in the published README's recommended run.
    standardize: logit standardisation of both logits first.
    axis: the class axis.

  Returns:
    Per-example losses in >= float32.
  """
  axis = c.check_pair(student_logits, teacher_logits, axis)
  c.check_labels(labels, student_logits.shape, axis)
  c.check_nonnegative("alpha", alpha)
  c.check_nonnegative("beta", beta)
  c.check_positive("temperature", temperature)
  if confidence_temperature is None:
    confidence_temperature = temperature
  c.check_positive("confidence_temperature", confidence_temperature)

  def rows(s, t, y):
    return _rld_rows(s, t, y, alpha, beta, temperature, confidence_temperature)

  return c.per_example(rows, student_logits, teacher_logits, labels, axis, standardize)
