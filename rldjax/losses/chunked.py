"""Per-example losses computed a chunk of examples at a time.

For token-level distillation over a large vocabulary, the examples are tokens
and the class axis is the vocabulary. A jitted value and gradient of a loss
over ``N × C`` logits holds several float32 arrays of that size at once:
bf16 logits of 2048 tokens × 128,000 classes (0.5 GB each) need 5.2 GB of
temporaries for ``kd`` and 7.3 GB for ``rld`` on XLA:CPU
(``python benchmarks/losses.py --chunked=256 --sizes=2048x128000
--dtype=bfloat16 --memory_only``). :func:`chunked` computes the
same losses ``rows`` examples at a time, so that only one chunk's
temporaries are live: O(rows × C) instead of O(N × C). On XLA:CPU, bf16
logits keep one float32 copy of the whole operand (XLA converts it before the
loop that slices it); float32 logits keep none (BENCHMARKS.md).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rldjax.losses import _common as c
from rldjax.losses.revision import label_revision


def chunked(loss: Callable, rows: int) -> Callable:
  """``loss`` computed ``rows`` examples at a time.

  Each example's loss depends on its own row of logits alone (every loss of
  this package but ``label_revision``), so for ``N`` examples split into
  chunks :math:`B_1, \\dots, B_m` of ``rows`` rows (the last one smaller),

  .. math:: \\ell_i = \\mathrm{loss}(S_{B_j}, T_{B_j}, y_{B_j})_i
     \\quad\\text{for } i \\in B_j,

  the same values and gradients as one call on all rows, up to float
  rounding (XLA may fuse a chunk's operations otherwise). The full chunks run
  one after the other (``jax.lax.map``) and each is recomputed in the
  backward pass (``jax.checkpoint``) instead of keeping its intermediates:
  the peak temporary memory of a value and gradient is that of one chunk,
  for about one more forward pass of compute. With ``N < 2·rows`` it is a
  plain call of ``loss``.

  Args:
    loss: a per-example loss of :mod:`rldjax.losses` (``kd``, ``dkd``,
      ``rld``, ``ldrld``, ``swap_kd``, ``rc``, or one from
      :func:`rldjax.losses.get`); any function
      ``loss(student_logits, teacher_logits[, labels], *, axis, **hparams)``
      whose result has the logits' shape without the class axis.
    rows: examples per chunk, a positive int.

  Returns:
    ``fn(student_logits, teacher_logits, labels=None, *, axis=-1,
    **hparams)``: ``loss``'s per-example losses (``labels`` is passed on when
    ``loss`` takes it, and must be None otherwise). Shapes, dtypes, labels
    and the class axis are checked as ``loss`` checks them, at trace time.

  Raises:
    ValueError: ``loss`` is ``label_revision`` (a batch scalar in its
      published form), or ``rows`` is not a positive int.
    TypeError: ``loss`` takes no ``axis`` keyword.

  Example: per-token RLD over a large vocabulary, 512 tokens at a time::

    rld_in_chunks = losses.chunked(losses.rld, rows=512)
    per_token = rld_in_chunks(student_logits, teacher_logits, labels)  # [B, T]
  """
  if getattr(loss, "__wrapped__", loss) is label_revision:
    raise ValueError("`loss`: label_revision is one scalar for the whole batch (its published "
                     "form mixes the examples), so it cannot be computed in chunks.")
  if isinstance(rows, (bool, np.bool_)) or not isinstance(rows, (int, np.integer)) or rows < 1:
    raise ValueError(f"`rows` must be a positive int, got {rows!r}.")
  rows = int(rows)
  parameters = inspect.signature(loss, follow_wrapped=False).parameters
  takes_labels = "labels" in parameters
  if "axis" not in parameters and not any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    raise TypeError(f"`loss`: {getattr(loss, '__name__', 'loss')} takes no `axis` keyword; "
                    "chunked calls it with axis=-1 on [rows, C] chunks (wrap it: "
                    "`lambda s, t, *, axis=-1: my_loss(s, t, axis=axis)`).")

  def block(student, teacher, labels, hparams):
    args = (student, teacher, labels) if takes_labels else (student, teacher)
    return loss(*args, axis=-1, **hparams)

  @functools.wraps(loss)
  def in_chunks(student_logits, teacher_logits, labels=None, *, axis=-1, **hparams):
    axis = c.check_pair(student_logits, teacher_logits, axis)
    if labels is not None:
      if not takes_labels:
        raise TypeError(f"`labels`: {getattr(loss, '__name__', 'loss')} takes no labels.")
      c.check_labels(labels, student_logits.shape, axis)
    return c.on_auto_axes(
        lambda s, t, y: _in_chunks(s, t, y, axis, hparams),
        c.runtime_values(student_logits, teacher_logits, labels),
        lambda: c.batch_spec(student_logits, axis))

  def _in_chunks(student_logits, teacher_logits, labels, axis, hparams):
    shape = c.batch_shape(student_logits.shape, axis)
    student = c.as_rows(student_logits, axis)
    teacher = c.as_rows(teacher_logits, axis)
    flat_labels = None if labels is None else labels.reshape(-1)
    n, num_classes = student.shape
    full = n // rows * rows
    if full <= rows:  # at most one full chunk: nothing to gain
      return block(student, teacher, flat_labels, hparams).reshape(shape)

    def split(x, start, stop, chunked_shape=None):
      if x is None:
        return None
      part = x[start:stop]
      return part if chunked_shape is None else part.reshape(chunked_shape)

    def one_chunk(xs):
      return block(*xs, hparams)

    chunks = (split(student, 0, full, (-1, rows, num_classes)),
              split(teacher, 0, full, (-1, rows, num_classes)),
              split(flat_labels, 0, full, (-1, rows)))
    parts = [jax.lax.map(jax.checkpoint(one_chunk), chunks).reshape(-1)]
    if full < n:
      parts.append(block(split(student, full, n), split(teacher, full, n),
                         split(flat_labels, full, n), hparams))
    return jnp.concatenate(parts).reshape(shape)

  return in_chunks
