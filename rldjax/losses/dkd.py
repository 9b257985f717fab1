"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)."""
from __future__ import annotations


from rldjax.losses import _common as c


def dkd_terms(s, t, y, temperature):
  """Rows [N, C] (already standardised if asked): (TCKD, NCKD) per row."""
  inv = 1.0 / temperature
  tckd = c.binary_kl_from_logit_gaps(c.target_gap(t, y, inv)[0], c.target_gap(s, y, inv)[0])
  non_target = ~c.one_hot_mask(y, s.shape[-1])
  times_inv = lambda z: z * inv
  nckd = c.masked_kl(c.scale_present(t, times_inv, inv), c.scale_present(s, times_inv, inv),
                     non_target)
  return tckd * temperature**2, nckd * temperature**2


def dkd(student_logits, teacher_logits, labels, *, alpha: float = 1.0,
        beta: float = 8.0, temperature: float = 4.0, standardize: bool = False,
        axis: int = -1):
  r"""Decoupled KD: target-class plus non-target-class distillation.

  With :math:`b = [p_y, 1 - p_y]` the binary target/rest split of
  :math:`p = \mathrm{softmax}(z/T)` and :math:`\hat p` the softmax over the
  non-target classes only (exact, the true class removed from the normaliser):

  .. math::
     \ell = T^2\big(\alpha\,\mathrm{KL}(b^t\|b^s)
            + \beta\,\mathrm{KL}(\hat p^t\|\hat p^s)\big)

  Args:
    student_logits, teacher_logits: float arrays ``[..., C, ...]``.
    labels: integer class indices, the logits' shape without ``axis``. A label
      outside ``[0, C)`` raises ``ValueError`` naming ``labels`` in an eager
      call; under ``jit``/``grad`` tracing (values unknown) that example's
      loss is NaN instead, never a finite number.
    alpha: TCKD weight, >= 0.  beta: NCKD weight, >= 0.
    temperature: T > 0.
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

  def rows(s, t, y):
    tckd, nckd = dkd_terms(s, t, y, temperature)
    return alpha * tckd + beta * nckd

  return c.per_example(rows, student_logits, teacher_logits, labels, axis, standardize)
