"""Closed-form student gradients behind a ``jax.custom_jvp``.

Reverse-mode autodiff of a masked softmax KL keeps every intermediate
[N, C] array of the forward pass and replays it backwards. The gradient with
respect to the student logits has a closed form that reuses the forward
pass's exponentials (for a KL over softmaxes it is ``(p_s - p_t) / T``), so the
losses that need speed (KD, its label swap and RC variants, RLD, LDRLD)
compute it themselves:
:func:`closed_form_student_gradient` wraps a ``loss_and_grad`` function into a
differentiable per-example loss.

* Student tangents use the closed-form gradient: ``d loss = <grad, ds>``.
* Tangents of every other argument (teacher logits, traced hyperparameters)
  go through ordinary autodiff of the same forward code, so ``jax.grad`` with
  respect to them, ``jax.jvp``, ``jax.hessian`` and ``jax.vmap`` all work.
* Arguments that are not being differentiated arrive as symbolic zeros and
  cost nothing.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


def closed_form_student_gradient(loss_and_grad: Callable) -> Callable:
  """``loss_and_grad(s, *rest) -> (loss [N], dloss/ds [N, C])`` -> ``loss(s, *rest)``.

  ``s`` are student logit rows [N, C]; row n of the loss depends only on row n
  of the inputs, so the per-row gradients form the whole Jacobian.
  """

  @jax.custom_jvp
  def loss(student, *rest):
    return loss_and_grad(student, *rest)[0]

  def loss_jvp(primals, tangents):
    student, rest = primals[0], primals[1:]
    d_student, d_rest = tangents[0], tangents[1:]
    value, grad = loss_and_grad(*primals)
    d_value = jnp.zeros_like(value)
    if not isinstance(d_student, SymbolicZero):
      d_value = d_value + jnp.sum(grad * d_student, axis=-1)
    moving = [i for i, d in enumerate(d_rest) if not isinstance(d, SymbolicZero)]
    if moving:
      def of_moving(*values):
        args = list(rest)
        for i, v in zip(moving, values):
          args[i] = v
        return loss_and_grad(student, *args)[0]
      _, d_other = jax.jvp(of_moving, tuple(rest[i] for i in moving),
                           tuple(d_rest[i] for i in moving))
      d_value = d_value + d_other
    return value, d_value

  loss.defjvp(loss_jvp, symbolic_zeros=True)
  return loss
