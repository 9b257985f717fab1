"""The compiled programs of a run, built once per process for every run that
differs only in seed, data location or cadence (the demo's runs reuse them).

Two data paths:

* **in memory** (dataset kinds ``cifar`` and ``digits``): the split lives on
  every device; :attr:`Programs.train_step_indexed` gathers the global batch of
  ``state.step`` by index (:mod:`rldjax.data.order`) and augments it on device
  (:mod:`rldjax.data.augment`), so the host only dispatches, asynchronously.
  :attr:`Programs.train_chunk` runs up to ``num_steps`` such steps in one call
  (a ``while_loop`` inside ``shard_map``; ``config.steps_per_call`` > 1),
  stopping after the first non-finite step. The default is one step per call
  (dispatched asynchronously); several per call save the dispatch of small
  models' steps (BENCHMARKS.md, "Several steps per device call").
  :attr:`Programs.evaluate_arrays` evaluates a whole split in one call. With
  ``teacher.precompute_logits`` (training images without augmentation only),
  :attr:`Programs.teacher_logits` computes the teacher's logits of the whole
  training split once, and the in-memory steps gather them by index instead
  of running the teacher (they take those logits where they otherwise take
  the teacher's variables). With
  ``dataset.in_memory=False`` the same indices are gathered on the host and
  fed one step at a time (:attr:`Programs.train_step_raw`): the batches are
  identical.
* **streaming** (``imagenet``): host-preprocessed batches, one step per call
  (:attr:`Programs.train_step`, :attr:`Programs.eval_step`).

Every train program takes the objective's weights
(:meth:`rldjax.train.recipe.Recipe.weights`) as an argument after the
teacher's, so runs that differ only in their weights (the demo's weight
factors) share one compiled program; only which weights are zero is compiled in.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from rldjax import models
from rldjax.data import augment, order
from rldjax.train import optim, recipe, step as step_lib
from rldjax.train.state import TrainState, best_after_evaluation

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Fields that change neither the programs nor what they compute.
_NOT_IN_PROGRAMS = ("seed", "checkpoint", "log_every_steps", "steps_per_call", "num_epochs",
                    "distributed", "eval_last_epochs")


@dataclasses.dataclass
class Programs:
  student: Any
  teacher: Any
  tx: Any
  mesh: Any
  init: Callable
  init_state: Callable
  train_step: Callable
  train_step_raw: Callable
  train_step_indexed: Callable
  train_chunk: Callable
  teacher_logits: Callable | None
  epoch_permutation: Callable
  eval_step: Callable
  eval_step_raw: Callable
  evaluate_arrays: Callable
  best_after_evaluation: Callable


def program_key(config) -> str:
  """Everything the compiled programs depend on, as a hashable string."""
  c = config.to_dict()
  for key in _NOT_IN_PROGRAMS:
    c.pop(key, None)
  c["dataset"] = {k: v for k, v in c["dataset"].items()
                  if k in ("image_size", "num_classes", "kind")}
  for field in recipe.WEIGHT_FIELDS:  # arguments of the programs: only zero or not is compiled in
    c[field] = float(bool(c.get(field, 0.0)))
  c["teacher"] = ({"tag": c["teacher"]["tag"], "precompute": precomputes_teacher(config)}
                  if config.method != "vanilla" else None)
  return json.dumps(c, sort_keys=True, default=str)


def precomputes_teacher(config) -> bool:
  """Whether the run gathers precomputed teacher logits instead of running
  the teacher in every step (``config.teacher.precompute_logits``)."""
  return config.method != "vanilla" and bool(config.teacher.get("precompute_logits", False))


def build(config, steps_per_epoch: int) -> Programs:
  return _build(program_key(config), steps_per_epoch, tuple(jax.devices()))


@functools.lru_cache(maxsize=32)  # the demo uses 10 programs in one process
def _build(key: str, steps_per_epoch: int, devices) -> Programs:
  config = ml_collections.ConfigDict(json.loads(key))
  kind = config.dataset.kind
  student = models.create(config.student.tag, config.dataset.num_classes,
                          dtype=DTYPES[config.student.dtype], bn_axis_name=step_lib.AXIS)
  teacher = None
  if config.method != "vanilla":
    teacher = models.create(config.teacher.tag, config.dataset.num_classes)
  precomputed = config.method != "vanilla" and config.teacher.precompute
  tx = optim.sgd(optim.schedule(config, steps_per_epoch), config.optimizer.momentum,
                 config.optimizer.weight_decay, config.optimizer.weight_decay_mask,
                 config.optimizer.nesterov)
  mesh = step_lib.data_mesh(list(devices))
  per_device = step_lib.make_train_step(student, teacher, recipe.Recipe.from_config(config),
                                        tx, steps_per_epoch)
  global_batch = config.batch_size
  device_batch = global_batch // len(devices)
  eval_batch = config.eval_batch_size
  eval_device_batch = eval_batch // len(devices)

  def train_step_indexed(state, teacher_variables, weights, data_key, images, labels, perm):
    """One step on the global batch ``state.step`` of the epoch whose order is
    ``perm``. With precomputed teacher logits, ``teacher_variables`` is the
    [N, classes] array of :attr:`Programs.teacher_logits`."""
    epoch = state.step // steps_per_epoch
    idx = order.batch_indices(perm, state.step % steps_per_epoch, global_batch,
                              lax.axis_index(step_lib.AXIS) * device_batch, device_batch)
    x = augment.train_images(images[idx], order.example_keys(data_key, epoch, idx), kind)
    batch = {"image": x, "label": labels[idx]}
    if precomputed:
      batch["teacher_logits"] = teacher_variables[idx]
    return per_device(state, teacher_variables, batch, weights)

  def train_chunk(state, teacher_variables, weights, data_key, images, labels, perm, num_steps):
    """Up to ``num_steps`` steps (within one epoch) in one call; stops after
    the first non-finite step."""
    def cond(carry):
      i, _, finite, _ = carry
      return (i < num_steps) & finite

    def body(carry):
      i, state, _, _ = carry
      state, metrics = train_step_indexed(state, teacher_variables, weights, data_key, images,
                                          labels, perm)
      return i + 1, state, metrics["finite"] > 0, metrics["loss"]

    init = (jnp.zeros((), jnp.int32), state, jnp.ones((), bool), jnp.zeros((), jnp.float32))
    done, state, finite, loss = lax.while_loop(cond, body, init)
    return state, {"steps": done, "finite": finite, "loss": loss}

  def train_step_raw(state, teacher_variables, weights, data_key, batch):
    epoch = state.step // steps_per_epoch
    x = augment.train_images(batch["image"], order.example_keys(data_key, epoch, batch["index"]),
                             kind)
    return per_device(state, teacher_variables, {"image": x, "label": batch["label"]}, weights)

  def eval_step_raw(variables, batch):
    return lax.psum(step_lib.eval_sums(student, variables, augment.eval_images(batch["image"], kind),
                                       batch["label"], batch["mask"]), step_lib.AXIS)

  def evaluate_arrays(variables, images, labels):
    """Every example of the split once, in the global batches of
    :func:`rldjax.data.order.eval_batch_sizes`: full ones of ``eval_batch``
    in a loop, then one smaller batch for the remainder (no compute on padding
    beyond rounding it up to a multiple of the device count)."""
    n = images.shape[0]
    device = lax.axis_index(step_lib.AXIS)

    def batch_sums(start, per_device):
      idx = start + device * per_device + jnp.arange(per_device)
      mask = idx < n
      idx = jnp.minimum(idx, n - 1)
      return step_lib.eval_sums(student, variables, augment.eval_images(images[idx], kind),
                                labels[idx], mask)

    def body(s, sums):
      out = batch_sums(s * eval_batch, eval_device_batch)
      return {k: sums[k] + out[k] for k in sums}

    zeros = {k: lax.pcast(jnp.zeros((), jnp.float32), step_lib.AXIS, to="varying")
             for k in ("loss", "top1", "top5", "count")}  # per-device sums until the psum
    sizes = order.eval_batch_sizes(n, eval_batch, len(devices))
    full = sizes.count(eval_batch)  # a remainder rounded up to eval_batch is masked like one
    sums = lax.fori_loop(0, full, body, zeros)
    for size in sizes[full:]:  # the remainder
      out = batch_sums(full * eval_batch, size // len(devices))
      sums = {k: sums[k] + out[k] for k in sums}
    return lax.psum(sums, step_lib.AXIS)

  def teacher_logits(teacher_variables, images):
    """The teacher's inference-mode float32 logits of every training image, in
    batches of ``eval_batch`` (the images take the training transform, which
    for these kinds involves no randomness)."""
    n = images.shape[0]
    batches = -(-n // eval_batch)
    padded = jnp.concatenate([images, jnp.zeros((batches * eval_batch - n,) + images.shape[1:],
                                                images.dtype)])

    def one(chunk):
      x = augment.train_images(chunk, None, kind)
      return teacher.apply(teacher_variables, x, train=False).astype(jnp.float32)
    logits = lax.map(one, padded.reshape((batches, eval_batch) + images.shape[1:]))
    return logits.reshape((batches * eval_batch, -1))[:n]

  size = config.dataset.image_size
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  init_variables = lambda rng: student.init(rng, jnp.zeros((1, size, size, 3)), train=False)

  def init_state(seed):
    """The run's initial train state from its uint32 ``seed``: the student's
    variables from ``key(seed)`` and the state's key ``fold_in(key(seed), 1)``
    (rbg keys: fast-compiling initialisers). One device call, replicated over
    the mesh as it is made (every process computes the same values)."""
    rng = jax.random.key(seed, impl="rbg")
    variables = init_variables(rng)
    return TrainState.create(variables["params"], variables["batch_stats"], tx,
                             jax.random.fold_in(rng, 1))
  return Programs(
      student=student, teacher=teacher, tx=tx, mesh=mesh, init=jax.jit(init_variables),
      init_state=jax.jit(init_state, out_shardings=replicated),
      train_step=step_lib.shard(lambda s, t, w, b: per_device(s, t, b, w), mesh, n_replicated=3,
                                donate=True),
      train_step_raw=step_lib.shard(train_step_raw, mesh, n_replicated=4, donate=True),
      train_step_indexed=step_lib.shard(train_step_indexed, mesh, n_replicated=7, donate=True,
                                        batch_last=False),
      train_chunk=step_lib.shard(train_chunk, mesh, n_replicated=8, donate=True,
                                 batch_last=False),
      teacher_logits=(jax.jit(teacher_logits, out_shardings=replicated) if precomputed
                      else None),
      epoch_permutation=jax.jit(order.epoch_permutation, static_argnums=2,
                                out_shardings=replicated),
      eval_step=step_lib.shard(step_lib.make_eval_step(student), mesh, n_replicated=1),
      eval_step_raw=step_lib.shard(eval_step_raw, mesh, n_replicated=1),
      evaluate_arrays=step_lib.shard(evaluate_arrays, mesh, n_replicated=3, batch_last=False),
      best_after_evaluation=jax.jit(best_after_evaluation, donate_argnums=(0,)))

