"""Label revision (Lan & Tian, "Improve Knowledge Distillation via Label
Revision and Data Selection", 2024), as in its published code."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rldjax.losses import _common as c


def label_revision(student_logits, teacher_logits, labels, *, lambda1: float = 4.0,
                   lambda2: float = 1.0, eta: float = 0.8, axis: int = -1):
  r"""The published label-revision loss: a batch scalar, not per example.

  Rows split by whether the teacher's top-1 class equals the label. On the
  :math:`R` right rows: cross-entropy and an elementwise MSE between logits.
  On the :math:`W` wrong rows the teacher's probabilities are revised towards
  the label, :math:`\tilde p = \beta p^t + (1-\beta)\,e_y` with
  :math:`\beta = \eta / (\max_c p^t_c - p^t_y + 1)`, and matched by an MSE of
  probabilities:

  .. math::
     \mathcal{L} = \frac{1}{|R|}\sum_{R}\mathrm{CE}(z^s, y)
       + \frac{\lambda_1}{|R|\,C}\sum_{R}\|z^s - z^t\|^2
       + \frac{\lambda_2}{|W|\,C}\sum_{W}\|\mathrm{softmax}(z^s) - \tilde p\|^2

  A part whose row set is empty contributes 0. Because the published loss
  averages within the right and wrong subsets, it does not decompose into a
  mean of per-example values. Note that the published form carries its own
  cross-entropy (on the right rows only).

  Args:
    student_logits, teacher_logits: float arrays ``[..., C, ...]``; all
      leading dims together form the batch.
    labels: integer class indices, the logits' shape without ``axis``. A label
      outside ``[0, C)`` raises ``ValueError`` naming ``labels`` in an eager
      call; under ``jit``/``grad`` tracing (values unknown) the batch
      loss is NaN instead, never a finite number.
    lambda1, lambda2: weights >= 0.  eta: revision strength, >= 0.
    axis: the class axis.

  Returns:
    A scalar in >= float32 (replicated, under explicit sharding).
  """
  axis = c.check_pair(student_logits, teacher_logits, axis)
  c.check_labels(labels, student_logits.shape, axis)
  for name, value in (("lambda1", lambda1), ("lambda2", lambda2), ("eta", eta)):
    c.check_nonnegative(name, value)
  return c.on_auto_axes(
      lambda s, t, y: _label_revision(s, t, y, lambda1, lambda2, eta, axis),
      c.runtime_values(student_logits, teacher_logits, labels), jax.sharding.PartitionSpec)


def _label_revision(student_logits, teacher_logits, labels, lambda1, lambda2, eta, axis):
  dtype = c.compute_dtype(student_logits, teacher_logits)
  s = c.as_rows(student_logits, axis, dtype)
  t = c.as_rows(teacher_logits, axis, dtype)
  num_classes = s.shape[-1]
  y_in = labels.reshape((-1,)).astype(jnp.int32)
  y = jnp.where(c.valid_labels(y_in, num_classes), y_in, 0)

  right = (jnp.argmax(t, axis=-1) == y).astype(dtype)
  wrong = 1.0 - right
  n_right, n_wrong = jnp.sum(right), jnp.sum(wrong)
  safe = lambda n: jnp.maximum(n, 1.0)

  log_ps = jax.nn.log_softmax(s, axis=-1)
  ce = -jnp.take_along_axis(log_ps, y[:, None], axis=-1)[:, 0]
  ce_term = jnp.sum(right * ce) / safe(n_right)
  mse_logits = jnp.sum(right[:, None] * (s - t) ** 2) / (safe(n_right) * num_classes)

  pt = jax.nn.softmax(t, axis=-1)
  gt = jnp.take_along_axis(pt, y[:, None], axis=-1)
  beta = eta / (jnp.max(pt, axis=-1, keepdims=True) - gt + 1.0)
  revised = beta * pt + (1.0 - beta) * jax.nn.one_hot(y, num_classes, dtype=dtype)
  mse_probs = (jnp.sum(wrong[:, None] * (jnp.exp(log_ps) - revised) ** 2)
               / (safe(n_wrong) * num_classes))
  loss = ce_term + lambda1 * mse_logits + lambda2 * mse_probs
  # A label outside [0, C) (only possible under tracing; eager calls raise)
  # makes the batch loss NaN.
  return jnp.where(jnp.all(c.valid_labels(y_in, num_classes)), loss, jnp.nan)
