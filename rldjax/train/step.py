"""The per-device distillation step and the evaluation step.

Both are pure functions of (state, teacher variables, local batch) that
average over the ``'data'`` mesh axis with ``lax.pmean``; :func:`shard` runs
them with ``jax.shard_map`` under ``jax.jit`` over a 1-D device mesh.

What the step minimises is :func:`rldjax.train.recipe.objective` of the
student's logits at the 1-based epoch ``state.step // steps_per_epoch + 1``.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from rldjax.losses._common import compute_dtype
from rldjax.train import recipe as recipe_lib
from rldjax.train.state import TrainState

AXIS = "data"


def at_least_float32(logits):
  """Logits as the losses take them: bf16/f16 upcast to float32 (the
  published step's float32 losses), float64 kept (a float64 model's step is
  float64 throughout)."""
  return logits.astype(compute_dtype(logits))


def make_train_step(student: nn.Module, teacher: nn.Module | None, recipe: recipe_lib.Recipe,
                    tx: optax.GradientTransformation, steps_per_epoch: int) -> Callable:
  """Per-device step ``(state, teacher_variables, batch, weights=None)`` -> ``(state, metrics)``.

  ``recipe`` (a :class:`~rldjax.train.recipe.Recipe` or a config) says what is
  minimised. ``batch`` holds ``image`` [b, H, W, C] and ``label`` [b] for this
  device, and may hold ``teacher_logits`` [b, classes]: the teacher's
  inference-mode logits of those images, computed beforehand (then ``teacher``
  may be None and is not run). ``weights`` (optional ``{"ce", "distill",
  "kd"}`` scalars) replace the recipe's weights at run time
  (:func:`rldjax.train.recipe.objective_terms`). Gradients, metrics and the
  updated batch statistics are ``pmean``-ed over ``'data'``, so every device
  ends the step with the same state. ``metrics["finite"]`` is 1.0 when the
  loss and every gradient entry are finite (one reduction), 0.0 otherwise.
  The state it returns has the types of the one it takes (a float64 model's
  metrics are summed into the state's float32 epoch sums), so a jitted step
  compiles once and can be the body of a ``lax.scan``.
  """
  recipe = recipe_lib.Recipe.from_config(recipe)

  def step(state: TrainState, teacher_variables, batch, weights=None):
    images, labels = batch["image"], batch["label"]
    epoch = state.step // steps_per_epoch + 1  # 1-based, as in the published loop
    teacher_logits = None
    if recipe.uses_teacher and "teacher_logits" in batch:
      teacher_logits = jax.lax.stop_gradient(at_least_float32(batch["teacher_logits"]))
    elif recipe.uses_teacher:
      if teacher is None:
        raise ValueError(f"method {recipe.method!r} needs a teacher, or the teacher's logits "
                         "in batch['teacher_logits']")
      teacher_logits = jax.lax.stop_gradient(
          at_least_float32(teacher.apply(teacher_variables, images, train=False)))

    def loss_fn(params):
      logits, updates = student.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"])
      logits = at_least_float32(logits)
      terms = recipe_lib.objective_terms(recipe, logits, teacher_logits, labels, epoch, weights)
      accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
      metrics = {"loss": terms["total"], "ce": terms["ce"], "distill": terms["distill"],
                 "kd": terms["kd"], "accuracy": accuracy}
      return terms["total"], (updates["batch_stats"], metrics)

    # Differentiate w.r.t. a per-device ("varying") copy of the replicated
    # params: each device gets its local gradient, averaged explicitly below.
    # (Differentiating the replicated params directly would already sum the
    # gradients over 'data', and the pmean would then scale them by the
    # device count.)
    local_params = jax.lax.pcast(state.params, AXIS, to="varying")
    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(local_params)
    grads = jax.lax.pmean(grads, AXIS)
    batch_stats = jax.lax.pmean(batch_stats, AXIS)
    metrics = jax.lax.pmean(metrics, AXIS)
    grad_sum = sum(jnp.sum(g) for g in jax.tree_util.tree_leaves(grads))
    metrics["finite"] = jnp.isfinite(metrics["loss"] + grad_sum).astype(jnp.float32)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # This epoch's running sums restart at its first step.
    first = (state.step % steps_per_epoch) == 0
    epoch_sums = {k: (jnp.where(first, 0.0, v) + (1.0 if k == "steps" else metrics[k])
                      ).astype(v.dtype) for k, v in state.epoch_sums.items()}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, epoch_sums=epoch_sums)
    return new_state, metrics

  return step


def eval_sums(model: nn.Module, variables, images, labels, mask) -> dict:
  """This device's sums of loss, top-1 and top-5 hits and the count over the
  examples where ``mask`` is 1 (padding rows are 0)."""
  logits = at_least_float32(model.apply(variables, images, train=False))
  mask = mask.astype(jnp.float32)
  loss = recipe_lib.cross_entropy(logits, labels)
  k = min(5, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  top1 = (top[:, 0] == labels).astype(jnp.float32)
  top5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
  return {"loss": jnp.sum(loss * mask), "top1": jnp.sum(top1 * mask),
          "top5": jnp.sum(top5 * mask), "count": jnp.sum(mask)}


def make_eval_step(model: nn.Module) -> Callable:
  """Per-device ``(variables, batch) -> sums``: exact counts over real examples.

  ``batch["mask"]`` marks real examples (padding of the last batch is 0);
  returns psum-ed sums of loss, top-1 and top-5 hits and the example count.
  """
  def step(variables, batch):
    return jax.lax.psum(eval_sums(model, variables, batch["image"], batch["label"],
                                  batch["mask"]), AXIS)
  return step


def data_mesh(devices=None) -> Mesh:
  import numpy as np  # pylint: disable=import-outside-toplevel
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def shard(per_device_step: Callable, mesh: Mesh, n_replicated: int, donate: bool = False,
          batch_last: bool = True):
  """``jax.jit(jax.shard_map(step))``: the first ``n_replicated`` arguments are
  replicated; with ``batch_last`` one more argument (the batch) follows, split
  over ``'data'``. Outputs are replicated. ``donate`` donates the first
  argument (the train state)."""
  in_specs = tuple([P()] * n_replicated) + ((P(AXIS),) if batch_last else ())
  mapped = jax.shard_map(per_device_step, mesh=mesh, in_specs=in_specs, out_specs=P())
  return jax.jit(mapped, donate_argnums=(0,) if donate else ())
