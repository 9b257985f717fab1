"""The train state: what a checkpoint holds and a resumed run continues from."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

# Running sums of the current epoch's training metrics (plus the step count).
EPOCH_SUM_KEYS = ("loss", "ce", "distill", "kd", "accuracy", "steps")


def zero_epoch_sums() -> dict:
  return {k: jnp.zeros((), jnp.float32) for k in EPOCH_SUM_KEYS}


@flax.struct.dataclass
class TrainState:
  """Student params, batch statistics, optimiser state, step, PRNG key data,
  this epoch's running training-metric sums, and the best evaluated model.

  The teacher is not part of it: it is frozen and never in the optimiser.
  ``rng`` is raw key data (``jax.random.key_data``) so that it checkpoints as
  a plain uint32 array. ``epoch_sums`` (keys :data:`EPOCH_SUM_KEYS`) restart
  at every epoch boundary, so a run resumed mid-epoch reports that epoch's
  training loss over all its steps. ``best`` holds the params and batch
  statistics that scored the highest test top-1 so far (the first such epoch
  on ties), with that top-1 and its 1-based epoch (-1 and 0 before any
  evaluation): ``export/best`` is written from it.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  epoch_sums: Any
  best: Any

  @classmethod
  def create(cls, params, batch_stats, tx: optax.GradientTransformation, rng):
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # own buffers (donation)
    best = {"params": copy(params), "batch_stats": copy(batch_stats),
            "top1": jnp.full((), -1.0, jnp.float32), "epoch": jnp.zeros((), jnp.int32)}
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), rng=jax.random.key_data(rng),
               epoch_sums=zero_epoch_sums(), best=best)

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def top1_percent(eval_sums) -> jax.Array:
  """Top-1 in percent (float32) from evaluation sums (``top1``, ``count``)."""
  return (100.0 * jnp.asarray(eval_sums["top1"], jnp.float32)
          / jnp.maximum(jnp.asarray(eval_sums["count"], jnp.float32), 1.0))


def best_after_evaluation(best, params, batch_stats, eval_sums, epoch) -> dict:
  """``best`` (:attr:`TrainState.best`) replaced by ``params`` and
  ``batch_stats`` when this evaluation's top-1 (from the sums ``top1`` and
  ``count``, see :func:`top1_percent`) beats it (strictly: on a tie the
  earlier epoch stays best). Pure; jit it. Taking the sums, not a host float,
  lets the loop dispatch it before reading anything back; taking and
  returning only ``best`` (not the whole state) leaves the rest of the state
  readable while the evaluation runs, and makes one output per array of
  ``best`` instead of one per array of the state."""
  top1 = top1_percent(eval_sums)
  better = top1 > best["top1"]
  pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), new, old)
  return {"params": pick(params, best["params"]),
          "batch_stats": pick(batch_stats, best["batch_stats"]),
          "top1": jnp.where(better, top1, best["top1"]),
          "epoch": jnp.where(better, jnp.asarray(epoch, jnp.int32), best["epoch"])}
