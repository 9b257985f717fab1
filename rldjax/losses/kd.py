"""Hinton knowledge distillation and the label-aware KD variants.

* :func:`kd` — Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
  Network" (2015).
* :func:`swap_kd` — KD against a teacher whose true-class and top-1 logits are
  swapped, the "label swap" baseline of the RLD paper (Sun et al., ICCV 2025).
* :func:`rc` — the RC baseline of the RLD paper's published code: KD of the
  student towards its own (detached) logits with the true class boosted.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rldjax.losses import _common as c
from rldjax.losses._gradients import closed_form_student_gradient

# T^2 KL(softmax(t/T) || softmax(s/T)) of each row [N, C], with its student
# gradient T (p_s - p_t) in closed form (rldjax/losses/_gradients.py): at
# 1024 x 32000 on XLA:CPU the value and gradient take 0.59x the time of
# autodiff through the log-softmaxes, at 512 x 1000 0.72x (BENCHMARKS.md).
_kl_rows = closed_form_student_gradient(
    lambda s, t, temperature: c.kl_and_student_grad(t, s, t, s, temperature))


def kd(student_logits, teacher_logits, *, temperature: float = 4.0,
       standardize: bool = False, axis: int = -1):
  r"""Hinton KD, one loss per example.

  .. math::
     \ell = T^2 \, \mathrm{KL}\big(\mathrm{softmax}(z^t / T) \,\|\,
     \mathrm{softmax}(z^s / T)\big)

  The student gradient :math:`T\,(p^s - p^t)` is computed in closed form
  behind a ``jax.custom_jvp``, as in :func:`rldjax.losses.rld`; teacher and
  temperature gradients, forward mode and Hessians go through ordinary
  autodiff.

  Args:
    student_logits: float array ``[..., C, ...]`` (bf16/f16/f32/f64).
    teacher_logits: float array of the same shape; treated as data (take
      ``jax.lax.stop_gradient`` yourself if it comes from a trained network).
    temperature: T > 0.
    standardize: apply logit standardisation (z - mean) / (1e-7 + std) to both
      logits first (Sun et al., "Logit Standardization in KD", CVPR 2024).
    axis: the class axis.

  Returns:
    Per-example losses, the logits' shape without ``axis``, in >= float32.
  """
  axis = c.check_pair(student_logits, teacher_logits, axis)
  c.check_positive("temperature", temperature)

  def rows(s, t, _):
    return _kl_rows(s, t, temperature)

  return c.per_example(rows, student_logits, teacher_logits, None, axis, standardize)


def swapped_teacher_logits(teacher_logits, labels):
  """Rows [N, C]: the teacher's true-class and top-1 logits exchanged."""
  top1 = jnp.argmax(teacher_logits, axis=-1)
  idx = jnp.arange(teacher_logits.shape[0])
  true_logit = teacher_logits[idx, labels]
  top_logit = teacher_logits[idx, top1]
  swapped = teacher_logits.at[idx, top1].set(true_logit)
  return swapped.at[idx, labels].set(top_logit)


def swap_kd(student_logits, teacher_logits, labels, *, temperature: float = 4.0,
            standardize: bool = False, axis: int = -1):
  r"""KD against the label-swapped teacher (RLD paper's "label swap" baseline).

  Where the teacher's top-1 class :math:`m` differs from the label :math:`y`,
  its logits :math:`z^t_y` and :math:`z^t_m` are exchanged, so that the teacher
  ranks the true class first; then :math:`T^2\,\mathrm{KL}` as in :func:`kd`.
  Rows the teacher gets right are plain KD.

  Args:
    student_logits, teacher_logits: float arrays ``[..., C, ...]``.
    labels: integer class indices, the logits' shape without ``axis``. A label
      outside ``[0, C)`` raises ``ValueError`` naming ``labels`` in an eager
      call; under ``jit``/``grad`` tracing (values unknown) that example's
      loss is NaN instead, never a finite number.
    temperature: T > 0.
    standardize: logit standardisation of both logits before the swap.
    axis: the class axis.

  Returns:
    Per-example losses in >= float32.
  """
  axis = c.check_pair(student_logits, teacher_logits, axis)
  c.check_labels(labels, student_logits.shape, axis)
  c.check_positive("temperature", temperature)

  def rows(s, t, y):
    return _kl_rows(s, swapped_teacher_logits(t, y), temperature)

  return c.per_example(rows, student_logits, teacher_logits, labels, axis, standardize)


def rc(student_logits, teacher_logits, labels, *, temperature: float = 4.0,
       standardize: bool = False, axis: int = -1):
  r"""The RC baseline of the published RLD code (self-distillation target).

  The target is the student's own logits, detached, with the true-class logit
  raised by the row maximum, :math:`\tilde z_y = z^s_y + \max_c z^s_c`:

  .. math::
     \ell = T^2\,\mathrm{KL}\big(\mathrm{softmax}(\mathrm{sg}[\tilde z]/T)
     \,\|\,\mathrm{softmax}(z^s/T)\big)

  ``teacher_logits`` is accepted for the uniform registry signature and only
  checked for shape; it does not enter the loss.

  Args:
    student_logits, teacher_logits: float arrays ``[..., C, ...]``.
    labels: integer class indices, the logits' shape without ``axis``. A label
      outside ``[0, C)`` raises ``ValueError`` naming ``labels`` in an eager
      call; under ``jit``/``grad`` tracing (values unknown) that example's
      loss is NaN instead, never a finite number.
    temperature: T > 0.
    standardize: logit standardisation of both logits first.
    axis: the class axis.

  Returns:
    Per-example losses in >= float32.
  """
  axis = c.check_pair(student_logits, teacher_logits, axis)
  c.check_labels(labels, student_logits.shape, axis)
  c.check_positive("temperature", temperature)

  def rows(s, _, y):
    idx = jnp.arange(s.shape[0])
    target = s.at[idx, y].add(jnp.max(s, axis=-1))
    return _kl_rows(s, jax.lax.stop_gradient(target), temperature)

  return c.per_example(rows, student_logits, teacher_logits, labels, axis, standardize)
