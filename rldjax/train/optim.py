"""Optimiser and learning-rate schedules as in the published code.

SGD with momentum in PyTorch's form (buf = m·buf + g; p -= lr·buf), with the
weight decay added to the gradient of every parameter (batch-norm scales and
biases included, as ``torch.optim.SGD(weight_decay=...)`` does) unless a mask
says otherwise. Learning rates change at epoch boundaries.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rldjax.train import recipe


def schedule(config, steps_per_epoch: int) -> Callable:
  """The optax schedule ``step -> lr``: :func:`rldjax.train.recipe.learning_rate`
  of the 1-based epoch ``step // steps_per_epoch + 1`` (constant within an
  epoch, as the published code sets it once per epoch)."""
  def fn(step):
    return recipe.learning_rate(config, jnp.asarray(step, jnp.int32) // steps_per_epoch + 1)
  return fn


def decay_all(params):
  return jax.tree_util.tree_map(lambda _: True, params)


def decay_kernels_only(params):
  """Mask: decay conv/dense kernels only (not biases or batch-norm params)."""
  return {layer: {name: name == "kernel" for name in leaves} for layer, leaves in params.items()}


WEIGHT_DECAY_MASKS = {"all": decay_all, "kernels": decay_kernels_only}


def sgd(schedule: Callable, momentum: float = 0.9, weight_decay: float = 5e-4,
        weight_decay_mask: str = "all", nesterov: bool = False) -> optax.GradientTransformation:
  """PyTorch SGD: g += wd·p (masked); buf = momentum·buf + g; p -= lr·buf."""
  if weight_decay_mask not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"weight_decay_mask must be one of {sorted(WEIGHT_DECAY_MASKS)}, "
                     f"got {weight_decay_mask!r}")
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=WEIGHT_DECAY_MASKS[weight_decay_mask]),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
  )
