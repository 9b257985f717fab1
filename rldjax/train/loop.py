"""train_and_evaluate: teacher training (method "vanilla") and distillation.

Resumable: restarting with the same workdir continues from the newest
readable checkpoint, and the final parameters equal those of an uninterrupted
run (the input pipeline is a pure function of seed, epoch and step).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from rldjax import errors, export, models
from rldjax.data import input_pipeline
from rldjax.train import checkpoint as ckpt_lib
from rldjax.train import config as config_lib
from rldjax.train import optim, recipe, step as step_lib
from rldjax.train.state import TrainState

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _program_key(config) -> str:
  """Everything the compiled programs depend on (not the seed, the data
  location or the teacher's weights), as a hashable string."""
  c = config.to_dict()
  for key in ("seed", "checkpoint", "log_every_steps", "num_epochs"):
    c.pop(key, None)
  c["dataset"] = {k: v for k, v in c["dataset"].items() if k in ("image_size", "num_classes")}
  c["teacher"] = c["teacher"]["tag"] if config.method != "vanilla" else None
  return json.dumps(c, sort_keys=True, default=str)


@functools.lru_cache(maxsize=8)
def _programs(key: str, steps_per_epoch: int):
  """(student, tx, train_step, eval_step, init_fn, mesh), built once per process for
  runs that differ only in seed or data (their jit caches are then reused)."""
  config = ml_collections.ConfigDict(json.loads(key))
  student = models.create(config.student.tag, config.dataset.num_classes,
                          dtype=DTYPES[config.student.dtype], bn_axis_name=step_lib.AXIS)
  teacher = None
  if config.method != "vanilla":
    teacher = models.create(config.teacher, config.dataset.num_classes)
  tx = optim.sgd(optim.schedule(config, steps_per_epoch), config.optimizer.momentum,
                 config.optimizer.weight_decay, config.optimizer.weight_decay_mask,
                 config.optimizer.nesterov)
  mesh = step_lib.data_mesh()
  train_step = step_lib.shard(
      step_lib.make_train_step(student, teacher, recipe.Recipe.from_config(config), tx,
                               steps_per_epoch), mesh,
      n_replicated=2, donate=True)
  eval_step = step_lib.shard(step_lib.make_eval_step(student), mesh, n_replicated=1)
  size = config.dataset.image_size
  init_fn = jax.jit(lambda rng: student.init(rng, jnp.zeros((1, size, size, 3)), train=False))
  return student, tx, train_step, eval_step, init_fn, mesh


def _load_teacher(config):
  """The teacher's variables (None for vanilla), checked against the config."""
  if config.method == "vanilla":
    return None
  path = config.teacher.checkpoint
  if not os.path.exists(os.path.join(path, "model.json")):
    raise errors.TeacherError(
        f"config.teacher.checkpoint: no exported model at {os.path.abspath(path)}. Convert the "
        "published teachers once with `python -m rldjax.convert cifar_teachers.tar "
        "runs/cifar100/teachers` (ImageNet: `python -m rldjax.convert --arch imagenet/ResNet34 "
        "resnet34-b627a593.pth runs/imagenet/teachers/ResNet34/export`), or pass "
        "teacher=<a teacher run's workdir>/export/last in the config string")
  tag, num_classes, variables = export.load_model(path)
  if config.teacher.tag != tag:
    raise errors.TeacherError(f"config.teacher.tag is {config.teacher.tag!r} but {path} holds "
                              f"{tag!r}")
  if num_classes != config.dataset.num_classes:
    raise errors.TeacherError(f"config.teacher.checkpoint: teacher has {num_classes} classes, "
                              f"the dataset {config.dataset.num_classes}")
  return jax.device_put(variables)


def _results(workdir, config, history, wall_time, finished):
  best = max(history, key=lambda h: h["top1"]) if history else None
  last = history[-1] if history else None
  return {
      "method": config.method, "student": config.student.tag,
      "teacher": config.teacher.tag if config.method != "vanilla" else None,
      "dataset": config.dataset.name, "seed": config.seed,
      "finished": finished, "epochs_completed": len(history), "num_epochs": config.num_epochs,
      "best_top1": best and best["top1"], "best_top5": best and best["top5"],
      "best_epoch": best and best["epoch"],
      "last_top1": last and last["top1"], "last_top5": last and last["top5"],
      "wall_time_s": wall_time, "history": history, "config": config.to_dict(),
      "workdir": os.path.abspath(workdir),
  }


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)


def _export(workdir, name, tag, variables):
  target = os.path.join(workdir, "export", name)
  tmp = target + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  export.save_model(tmp, tag, variables)
  shutil.rmtree(target, ignore_errors=True)
  os.replace(tmp, target)


def evaluate(eval_step, variables, batches) -> dict:
  sums = None
  for batch in batches:
    out = jax.device_get(eval_step(variables, batch))
    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
  count = float(sums["count"])
  return {"top1": 100.0 * float(sums["top1"]) / count, "top5": 100.0 * float(sums["top5"]) / count,
          "loss": float(sums["loss"]) / count, "count": int(count)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_epochs: int | None = None) -> dict:
  """Runs (or resumes) the experiment in ``workdir``; returns results.json's
  content. ``stop_after_epochs`` stops early as a preemption would (tests)."""
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)  # Orbax needs absolute paths
  os.makedirs(workdir, exist_ok=True)
  start_time = time.time()
  previous_wall = 0.0
  if os.path.exists(os.path.join(workdir, "results.json")):
    with open(os.path.join(workdir, "results.json")) as f:
      previous_wall = float(json.load(f).get("wall_time_s") or 0.0)
  start_time -= previous_wall
  teacher_vars = _load_teacher(config)
  builder = input_pipeline.load_builder(config.dataset.name, config.dataset.data_dir or None,
                                        config.dataset.download)
  n_devices = jax.device_count()
  if config.batch_size % n_devices:
    raise ValueError(f"config.batch_size: {config.batch_size} is not divisible by the "
                     f"{n_devices} devices")
  steps_per_epoch = input_pipeline.steps_per_epoch(builder, config.dataset.train_split,
                                                   config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size: {config.batch_size} exceeds the training split")
  total_steps = steps_per_epoch * config.num_epochs

  student, tx, train_step, eval_step, init_fn, mesh = _programs(_program_key(config),
                                                                steps_per_epoch)
  size = config.dataset.image_size
  # The "rbg" PRNG: XLA compiles its initialisers several times faster than
  # threefry's (16 s -> 4 s for a small ResNet on CPU).
  rng = jax.random.key(config.seed, impl="rbg")
  variables = init_fn(rng)
  state = TrainState.create(variables["params"], variables["batch_stats"], tx,
                            jax.random.fold_in(rng, 1))
  # Replicated over the mesh from the start, so the step compiles once.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(state, replicated)
  if teacher_vars is not None:
    teacher_vars = jax.device_put(teacher_vars, replicated)

  manager = ckpt_lib.create_manager(os.path.join(workdir, "checkpoints"),
                                    config.checkpoint.keep_latest, config.checkpoint.keep_best)
  history_path = os.path.join(workdir, "history.json")
  try:
    restored = ckpt_lib.restore_latest(manager, ckpt_lib.abstract(state))
    history = []
    if restored is not None:
      state = restored
      if os.path.exists(history_path):
        with open(history_path) as f:
          history = json.load(f)
      done = int(state.step) // steps_per_epoch
      history = [h for h in history if h["epoch"] <= done]
      logging.info("resumed from step %d (epoch %d) in %s", int(state.step), done, workdir)

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})

    step = int(state.step)
    first_epoch = step // steps_per_epoch
    last_epoch = config.num_epochs if stop_after_epochs is None else min(
        config.num_epochs, first_epoch + stop_after_epochs)
    timer_step, timer = step, time.time()
    ds = config.dataset
    for epoch in range(first_epoch, last_epoch):
      batches = input_pipeline.train_batches(
          builder, ds.train_split, global_batch=config.batch_size, epoch=epoch,
          seed=config.seed, kind=ds.kind, image_size=size,
          start_step=step - epoch * steps_per_epoch, shuffle_buffer=ds.shuffle_buffer)
      train_metrics = []
      for batch in input_pipeline.to_global(batches, mesh):
        state, metrics = train_step(state, teacher_vars, batch)
        step += 1
        train_metrics.append(metrics)
        if step % config.log_every_steps == 0:
          m = jax.device_get(metrics)
          rate = (step - timer_step) / max(time.time() - timer, 1e-9)
          eta = (total_steps - step) / max(rate, 1e-9)
          writer.write_scalars(step, {f"train/{k}": float(v) for k, v in m.items()})
          logging.info("step %d/%d epoch %d  loss %.4f  %.2f steps/s  ETA %.0fs",
                       step, total_steps, epoch + 1, float(m["loss"]), rate, eta)
          timer_step, timer = step, time.time()
        if step % config.checkpoint.every_steps == 0 and step % steps_per_epoch:
          ckpt_lib.save(manager, state)
      if step != (epoch + 1) * steps_per_epoch:
        raise RuntimeError(f"epoch {epoch + 1} ended at step {step}, expected "
                           f"{(epoch + 1) * steps_per_epoch}: the input pipeline is short")
      result = evaluate(eval_step, {"params": state.params, "batch_stats": state.batch_stats},
                        input_pipeline.to_global(input_pipeline.eval_batches(
                            builder, ds.eval_split, global_batch=config.batch_size,
                            kind=ds.kind, image_size=size), mesh))
      train_loss = float(np.mean([float(m["loss"]) for m in jax.device_get(train_metrics)])) \
          if train_metrics else float("nan")
      lr = float(recipe.learning_rate(config, epoch + 1))
      history.append({"epoch": epoch + 1, "step": step, "top1": result["top1"],
                      "top5": result["top5"], "test_loss": result["loss"],
                      "train_loss": train_loss, "lr": lr})
      writer.write_scalars(step, {"test/top1": result["top1"], "test/top5": result["top5"],
                                  "test/loss": result["loss"], "train/epoch_loss": train_loss})
      logging.info("epoch %d/%d  test top-1 %.2f  top-5 %.2f  (%d examples)", epoch + 1,
                   config.num_epochs, result["top1"], result["top5"], result["count"])
      ckpt_lib.save(manager, state, metrics={"top1": result["top1"]}, force=True)
      if jax.process_index() == 0:
        _write_json(history_path, history)
        _write_json(os.path.join(workdir, "results.json"), _results(
            workdir, config, history, time.time() - start_time, finished=False))
    writer.flush()

    finished = len(history) >= config.num_epochs
    manager.wait_until_finished()
    if finished and jax.process_index() == 0:
      _export(workdir, "last", config.student.tag,
              {"params": state.params, "batch_stats": state.batch_stats})
      best_step = max(history, key=lambda h: h["top1"])["step"]
      best = state
      if best_step != int(state.step) and best_step in manager.all_steps():
        best = ckpt_lib.restore_step(manager, best_step, ckpt_lib.abstract(state))
      _export(workdir, "best", config.student.tag,
              {"params": best.params, "batch_stats": best.batch_stats})
    results = _results(workdir, config, history, time.time() - start_time, finished)
    if jax.process_index() == 0:
      _write_json(os.path.join(workdir, "results.json"), results)
    return results
  finally:
    manager.wait_until_finished()
    manager.close()
