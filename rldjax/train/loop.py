"""train_and_evaluate: teacher training (method "vanilla") and distillation.

A run owns its workdir (a lock whose heartbeat it keeps, checked before each
checkpoint and each epoch's writes: a run whose lock was deleted stops with
status 4, one whose lock another launch took over, after finding no
heartbeat for long, with status 2 and writes nothing more), records its
config there, and can be left alone:

* **Resumable.** Rerunning the same command continues from the newest readable
  checkpoint and ends bit-identical to an uninterrupted run: the batches are a
  pure function of (seed, epoch, step), and the checkpoint holds the train
  state, this epoch's running training-metric sums, the best model so far and
  the history. A corrupt checkpoint (unreadable, of another layout, or whose
  checksums no longer match) is reported, moved aside and skipped. A damaged
  results.json is set aside and rewritten; a damaged config.json stops the
  run (the experiment cannot be compared).
* **Stops loudly.** The first step whose loss or gradient is not finite stops
  the run (``DivergedError``, exit status 3) naming the step, epoch and value;
  the last good checkpoint is kept, nothing is exported, and results.json says
  ``"status": "diverged"``. SIGTERM saves a checkpoint of the step reached and
  stops (``PreemptedError``, exit status 143); rerun to resume. A file the
  run cannot write or read (a full disk, a missing permission: an OSError, or
  Orbax's TensorStore error made from one) stops it with ``StorageError``
  (exit status 4) naming the cause; the complete checkpoints are kept and
  results.json says ``"status": "storage_failed"`` if it can still be written.
  Any other exception once training has begun (a label outside the classes
  met while streaming, a bug, an accelerator out of memory, Ctrl-C) is
  re-raised after results.json says ``"status": "failed"``
  (``"interrupted"`` for Ctrl-C) with the error, so that a stopped run never
  reads as a running one. results.json says ``"running"`` from the start of
  training (a resumed run's included); only a process killed outright
  (SIGKILL, or the abort of JAX's distributed service when a peer stops
  answering heartbeats, status 134) leaves ``"running"`` behind, with its
  ``run.lock`` naming a pid that no longer runs (``python -m
  experiments.report`` says so). The record holds the epochs the checkpoints keep: those the
  same command resumes from.
* **Honest exports.** ``export/best`` is the state that scored the best test
  top-1 (the first such epoch), kept in the train state from the moment it was
  evaluated; ``export/last`` the final one. Each export's model.json records
  its epoch and top-1. Every epoch is evaluated unless
  ``config.eval_last_epochs`` = N > 0 limits that to the last N (the final
  epoch always is); the history keeps one record per epoch either way.

Multi-process: every process runs this function; process 0 writes every file
(lock, config, results, history, events, exports), and every process enters
every collective (Orbax checkpoint saves and restores) and every barrier.
First of all, each process compares its config with process 0's: a process
launched with another config stops every process (``RunError``, exit status 2).
Then every process reads back a file process 0 wrote in the workdir: a
process that does not see process 0's workdir (another path, a local disk)
stops every process the same way, before Orbax's first save would wait for it.
"""
from __future__ import annotations

import errno
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rldjax import distributed, errors, export, machine, run_lock
from rldjax.data import order
from rldjax.train import checkpoint as ckpt_lib
from rldjax.train import compile_clock
from rldjax.train import config as config_lib
from rldjax.train import data as data_lib
from rldjax.train import programs as programs_lib
from rldjax.train import recipe, step as step_lib, workdir as workdir_lib
from rldjax.train import results as results_lib
from rldjax.train import save_watchdog
from rldjax.train import teacher as teacher_lib
from rldjax.train.preemption import PreemptionWatcher
from rldjax.train.writer import ScalarWriter

CHUNK_SECONDS = 1.0  # about how often, at least, finite flags and stop requests are read
RESULTS_SECONDS = 10.0  # how often, at most, a running run rewrites results.json


# Config fields that may differ between the processes of one run: where each
# process finds the same files, and how many threads its host gives its input
# pipeline (the batches are the same).
PER_PROCESS_FIELDS = ("dataset.data_dir", "teacher.checkpoint", "dataset.host_threads")


def _resolved(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the teacher path made absolute."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.method != "vanilla":
    config.teacher.checkpoint = os.path.abspath(config.teacher.checkpoint)
  return config


def evaluates(config, epoch: int) -> bool:
  """Whether the run evaluates after the 1-based ``epoch``
  (``config.eval_last_epochs``: 0, every epoch; N, the last N)."""
  last = config.get("eval_last_epochs", 0)
  return not last or epoch > config.num_epochs - last


def _export(workdir, name, tag, num_classes, variables, metadata):
  """Writes export/<name> (replacing an older one). Process 0 writes it; every
  process waits for it, and a failure there is raised on every process (so no
  process is left waiting on one that has stopped)."""
  target = os.path.join(workdir, "export", name)

  def write():
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export.save_model(tmp, tag, variables, metadata, num_classes)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)

  distributed.on_primary(write)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_epochs: int | None = None) -> dict:
  """Runs (or resumes) the experiment in ``workdir``; returns results.json's
  content. ``stop_after_epochs`` stops early as a preemption would (tests)."""
  config_lib.validate(config)
  config = _resolved(config)
  workdir = workdir_lib.local_path(workdir)
  try:
    return _run_locked(config, workdir, stop_after_epochs)
  except Exception as err:  # pylint: disable=broad-except
    cause = workdir_lib.storage_failure(err)
    if cause is None:
      raise
    message = storage_failure_message(workdir, cause)
    results_lib.record_failure(workdir, "storage_failed", message)
    raise errors.StorageError(message) from err


def storage_failure_message(workdir: str, cause: str) -> str:
  """What a run stopped by its storage tells the user: whether a complete
  checkpoint is there to resume from, judged from the workdir as it is now,
  and what to fix first (nothing when the workdir or its lock was removed)."""
  removed = "the workdir was removed" in cause
  rerun = "Rerun" if removed else "Free space (or fix the permissions), then rerun"
  if ckpt_lib.complete_steps(os.path.join(workdir, "checkpoints")):
    return (f"storage failed in {workdir}: {cause}. The run stopped; its complete "
            f"checkpoints are kept. {rerun} the same command to resume.")
  return (f"storage failed in {workdir}: {cause}. The run stopped with no complete "
          "checkpoint in the workdir (none was written yet, or the workdir was removed "
          f"while the run wrote to it). {rerun} the same command: it starts the run again.")


def _run_locked(config, workdir, stop_after_epochs):
  """The run in ``workdir``, holding its lock."""
  distributed.check_same_as_primary(
      "comparing this process's config with process 0's (launch every process with the same "
      "command; only config.dataset.data_dir, config.teacher.checkpoint and "
      "config.dataset.host_threads may differ)",
      {f"config.{k}": v for k, v in workdir_lib.flatten_config(config.to_dict()).items()
       if k not in PER_PROCESS_FIELDS})
  distributed.on_primary(workdir_lib.ensure_workdir, workdir)
  distributed.check_shared_directory(workdir, "--workdir")
  lock = run_lock.WorkdirLock(workdir)
  distributed.on_primary(lock.acquire)
  try:
    distributed.on_primary(results_lib.set_aside_unreadable, workdir)
    distributed.on_primary(workdir_lib.check_config, workdir, config.to_dict(),
                           lambda: results_lib.epochs_done(workdir))
    return _Run(config, workdir, lock).run(stop_after_epochs)
  except Exception as err:  # pylint: disable=broad-except
    if (distributed.is_primary() and lock.held and workdir_lib.storage_failure(err) is None
        and (lock.lost() == "deleted"
             or (not isinstance(err, errors.RunError) and _removed_soon(workdir)))):
      # Our lock file is gone (or the workdir, within a second): the workdir
      # was removed (or emptied) under the run, and what failed next
      # (Orbax's metadata, say) is only a symptom.
      first = (str(err).strip().splitlines() or [""])[0][:200]
      raise FileNotFoundError(errno.ENOENT, "the workdir was removed while the run wrote to it "
                              f"({type(err).__name__}: {first})", workdir) from err
    if (not distributed.is_primary() and not isinstance(err, errors.RunError)
        and workdir_lib.storage_failure(err) is None and _removed_soon(workdir)):
      # Only process 0 writes the run's files, so this process learns of
      # their loss as a collective process 0 no longer joins (it stopped on
      # the removal, status 4); the shared workdir being gone says why.
      first = (str(err).strip().splitlines() or [""])[0][:200]
      raise FileNotFoundError(errno.ENOENT, "the workdir was removed while the run wrote to it "
                              f"(here: {type(err).__name__}: {first})", workdir) from err
    raise
  finally:
    if distributed.is_primary():
      lock.release()


# How long a process whose run failed with an error that names no storage
# looks for the workdir to be gone: a removal may still be deleting the
# workdir's files (its run.lock among them) when the run fails on it, on
# process 0 with an error of the checkpoint library's, on the others as a
# collective process 0 no longer joins.
REMOVAL_GRACE_SECONDS = 1.0


def _removed_soon(workdir: str) -> bool:
  """Whether ``workdir`` is gone now or within :data:`REMOVAL_GRACE_SECONDS`."""
  deadline = time.monotonic() + REMOVAL_GRACE_SECONDS
  while os.path.isdir(workdir):
    if time.monotonic() >= deadline:
      return False
    time.sleep(0.05)
  return True


def _unexpected_stop(err: BaseException) -> tuple[str, str] | None:
  """``(status, error)`` for results.json when ``err`` stops a run: ``failed``
  (``interrupted`` for Ctrl-C). None for the stops that record their own status
  (divergence, preemption, a storage failure: :func:`train_and_evaluate`
  records it)."""
  recorded = (errors.DivergedError, errors.PreemptedError, errors.InterruptedRunError,
              errors.StorageError,
              errors.LockLostError)  # the last: the workdir is another run's now
  if isinstance(err, recorded) or (isinstance(err, Exception)
                                   and workdir_lib.storage_failure(err) is not None):
    return None
  status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
  first = (str(err).strip().splitlines() or [""])[0]
  return status, (f"{type(err).__name__}: {first}".rstrip(": ") + ". The complete checkpoints "
                  "are kept; rerun the same command to resume.")


class _Run:
  """One session of a run in its workdir."""

  def __init__(self, config, workdir, lock):
    self.config, self.workdir = config, workdir
    self.lock = lock  # run_lock.WorkdirLock, held by process 0
    self.start = time.time()
    self.previous_wall, self.previous_train, self.previous_compile = (
        results_lib.previous_times(workdir))
    self.counts_time = True  # False: a rerun of a finished run (this session trains nothing)
    self.train_time = 0.0
    self.compile_start = compile_clock.seconds()
    self.max_chunk = 8
    self.pending = []
    self.last_write = 0.0
    self.learning_rates = {}
    self.history = None  # the epochs the checkpoints keep, once training has begun
    self.machine_changes = []  # workdir_lib.check_machine's record
    self.evaluation_ahead = None  # (step, evaluation sums) dispatched by _evaluate_ahead

  # -- bookkeeping -----------------------------------------------------------

  def wall(self):
    return self.previous_wall + (time.time() - self.start if self.counts_time else 0.0)

  def _step_seconds(self, t0: float, compile0: float) -> float:
    """Adds the time since ``t0`` to the time in steps, less the compilation
    done meanwhile (a program's first call compiles it); returns it."""
    seconds = max(time.time() - t0 - (compile_clock.seconds() - compile0), 0.0)
    self.train_time += seconds
    return seconds

  def write_results(self, history, status, extra=None, throttle=False):
    """results.json and history.json (process 0). ``throttle``: skip when the
    last write is less than RESULTS_SECONDS old (the progress record of a
    running run; the checkpoints hold the history in any case)."""
    now = time.time()
    if throttle and now - self.last_write < RESULTS_SECONDS:
      return None
    self.last_write = now
    compiled = compile_clock.seconds() - self.compile_start if self.counts_time else 0.0
    changes = {"machine_changes": self.machine_changes} if self.machine_changes else {}
    results = results_lib.summary(self.workdir, self.config, history, status, self.wall(),
                       self.previous_train + (self.train_time if self.counts_time else 0.0),
                       self.previous_compile + compiled,
                       {**changes, **(extra or {})})
    if distributed.is_primary():
      workdir_lib.write_json(os.path.join(self.workdir, "history.json"), history)
      workdir_lib.write_json(os.path.join(self.workdir, results_lib.FILE), results)
    return results

  def record_unexpected_stop(self, err: BaseException) -> None:
    """Best effort: results.json says how ``err`` stopped the run (see
    :func:`_unexpected_stop`), with the epochs the checkpoints keep; a run
    that had finished before this session stays recorded as finished."""
    stop = _unexpected_stop(err)
    if stop is None or not self.counts_time:
      return
    status, error = stop
    try:
      self.write_results(self.history, status, {"error": error})
    except Exception as failure:  # pylint: disable=broad-except
      logging.warning("could not record the %s run in %s: %s", status, self.workdir, failure)

  def _check_machine(self, devices):
    """Records the run's machine in machine.json, or says that this session
    resumes it on another one (workdir_lib.check_machine)."""
    record = distributed.on_primary(workdir_lib.check_machine, self.workdir,
                                    machine.numerics(devices))
    self.machine_changes = record["recorded"]
    if record["this session"]:
      logging.warning(
          "this session resumes the run in %s on another machine than the one that started it "
          "(%s): it continues from the same checkpoint, but XLA compiles its programs for this "
          "one: its rounding differs, so it drifts apart from an uninterrupted run "
          "(recorded in machine.json and results.json under \"machine_changes\")",
          self.workdir, "; ".join(record["this session"]))

  # -- the run ---------------------------------------------------------------

  def run(self, stop_after_epochs):
    config, workdir = self.config, self.workdir
    ckpt_lib.quiet_orbax_logs()
    teacher_vars, teacher_identity = teacher_lib.load_everywhere(config)
    devices = jax.devices()
    for field in ("batch_size", "eval_batch_size"):
      if config[field] % len(devices):
        raise errors.ConfigError(f"config.{field}: {config[field]} is not divisible by the "
                                 f"{len(devices)} devices")
    mesh = step_lib.data_mesh(devices)
    data = data_lib.load(config, mesh)
    distributed.on_primary(workdir_lib.check_inputs, workdir, {**data.inputs, **teacher_identity})
    self._check_machine(devices)
    spe = data.steps_per_epoch
    if spe < 1:
      raise errors.ConfigError(f"config.batch_size: {config.batch_size} exceeds the training "
                               f"split ({data.num_train} examples)")
    self.programs = p = programs_lib.build(config, spe)
    seed = np.uint32(config.seed)
    if teacher_vars is not None:
      teacher_vars = distributed.replicate(mesh, teacher_vars)
    if p.teacher_logits is not None:  # what the steps take in the teacher's place
      # Counted as training time: it is the teacher's forward pass of every
      # step, done once per session instead.
      t0, compile0 = time.time(), compile_clock.seconds()
      teacher_vars = jax.block_until_ready(p.teacher_logits(teacher_vars, data.device_train[0]))
      self._step_seconds(t0, compile0)
    self.data_key = distributed.replicate(mesh, order.data_key_data(config.seed))
    self.weights = distributed.replicate(mesh, recipe.Recipe.from_config(config).weights())
    self.mesh, self.data, self.teacher_vars = mesh, data, teacher_vars

    manager = ckpt_lib.create_manager(os.path.join(workdir, "checkpoints"),
                                      config.checkpoint.keep_latest, config.checkpoint.keep_best)
    writer = ScalarWriter(workdir)
    try:
      history = []
      # The state's shapes, dtypes and shardings without computing it: a
      # resumed run neither compiles nor runs the initialisation.
      restored = ckpt_lib.restore_latest(manager, jax.eval_shape(p.init_state, seed))
      if restored is None:
        state = p.init_state(seed)  # replicated from the start: one compile
      else:
        state, history = restored
        logging.info("resumed from step %d (%d epochs done) in %s", int(state.step),
                     len(history), workdir)
        if len(history) >= config.num_epochs and os.path.exists(
            os.path.join(workdir, results_lib.FILE)):
          # Finished before: its recorded times stay those of the sessions that
          # trained it (this one's start-up would only lower its share in steps).
          self.counts_time = False
          logging.info("the run had finished (%d of %d epochs): nothing left to train; its "
                       "exports and results.json are written again from the checkpoint",
                       len(history), config.num_epochs)
      self.history = history
      if self.counts_time:
        # From its first step on, the run reads as running: a run killed outright
        # in its first epoch leaves a record (the report lists it), and a resumed
        # one no longer shows the status its last session stopped with.
        self.write_results(history, "running")
        self.last_write = 0.0  # the first epoch's end still writes its record, as before
      try:
        with PreemptionWatcher() as watcher:
          state, history = self.train(state, history, manager, writer, watcher,
                                      stop_after_epochs)
        finished = len(history) >= config.num_epochs
        if finished:  # written while the last checkpoint is saved in the background
          best = jax.device_get(state.best)
          best_epoch = history[int(best["epoch"]) - 1]
          last = history[-1]  # the final epoch is always evaluated
          _export(workdir, "last", config.student.tag, config.dataset.num_classes,
                  state.variables, {"epoch": last["epoch"], "top1": last["top1"]})
          _export(workdir, "best", config.student.tag, config.dataset.num_classes,
                  {"params": best["params"], "batch_stats": best["batch_stats"]},
                  {"epoch": best_epoch["epoch"], "top1": best_epoch["top1"]})
        manager.wait_until_finished()  # results.json last: a finished run is durable
        return self.write_results(history, "finished" if finished else "stopped")
      except BaseException as err:
        self.record_unexpected_stop(err)
        raise
    finally:
      writer.close()
      ckpt_lib.close(manager)

  def train(self, state, history, manager, writer, watcher, stop_after_epochs):
    config, spe = self.config, self.data.steps_per_epoch
    step = int(jax.device_get(state.step))
    # Epochs evaluated so far. A checkpoint saved on a stop request right at
    # an epoch's end holds that epoch trained but not yet evaluated.
    first_epoch = len(history)
    if not first_epoch * spe <= step <= (first_epoch + 1) * spe:
      raise RuntimeError(f"checkpoint at step {step} does not match its history of "
                         f"{first_epoch} epochs of {spe} steps")
    last_epoch = config.num_epochs if stop_after_epochs is None else min(
        config.num_epochs, first_epoch + stop_after_epochs)
    self.rate_mark = (step, self.train_time)
    for epoch in range(first_epoch, last_epoch):
      end = (epoch + 1) * spe
      for state, step, synced in self._advance(state, step, end, history):
        if watcher.requested(step):
          self._preempted(state, history, manager, step, watcher.interrupted)
        if not synced or step == end:  # the epoch's end: _end_epoch logs it
          continue
        if step % config.log_every_steps == 0:
          self._log_progress(step, epoch, jax.device_get(state.epoch_sums), writer)
        if step % config.checkpoint.every_steps == 0:
          self._stop_unless_lock_held()
          self._save(manager, state, history)
      state, history = self._end_epoch(state, history, epoch, manager, writer)
    writer.flush()
    return state, history

  def _next_stop(self, step, end):
    """The next step at which the loop logs, checkpoints or ends the epoch."""
    c = self.config
    return min([end] + [(step // k + 1) * k for k in (c.log_every_steps,
                                                      c.checkpoint.every_steps)])

  def _adapt_chunk(self, steps, seconds):
    """With one process, aim at about CHUNK_SECONDS between finite checks (so a
    stop request is served quickly). With several, every process must stop at
    the same steps, so the chunk stays fixed."""
    if jax.process_count() == 1:
      rate = steps / max(seconds, 1e-6)
      self.max_chunk = int(min(max(1, rate * CHUNK_SECONDS), 4 * max(self.max_chunk, 1)))

  def _advance(self, state, step, end, history):
    """Runs the steps up to ``end``, yielding ``(state, step, synced)`` after
    every device call, the same sequence on every process. ``synced``: every
    step so far is known to be finite (a diverged step raises); it holds at
    every step where the loop logs, checkpoints or ends the epoch, and at
    least every ``max_chunk`` steps."""
    c, p, data = self.config, self.programs, self.data
    epoch = end // data.steps_per_epoch - 1  # the epoch being trained (0-based)
    if data.path == "device" and c.steps_per_call > 1:
      images, labels = data.device_train
      perm = p.epoch_permutation(self.data_key, epoch, data.num_train)
      while step < end:
        count = min(self._next_stop(step, end) - step, self.max_chunk, c.steps_per_call)
        t0, compile0 = time.time(), compile_clock.seconds()
        state, info = p.train_chunk(state, self.teacher_vars, self.weights, self.data_key,
                                    images, labels, perm, np.int32(count))
        self._evaluate_ahead(state, step + count, end)
        info = jax.device_get(info)
        seconds = self._step_seconds(t0, compile0)
        if not info["finite"]:
          self._diverged(step + int(info["steps"]), float(info["loss"]), history)
        step += count
        self._adapt_chunk(count, seconds)
        yield state, step, True
      return
    if data.path == "device":
      images, labels = data.device_train
      perm = p.epoch_permutation(self.data_key, epoch, data.num_train)
      batches = ({} for _ in range(step, end))
      run = lambda s, _: p.train_step_indexed(s, self.teacher_vars, self.weights,
                                               self.data_key, images, labels, perm)
    elif data.path == "host":
      batches = self._to_global(data_lib.host_train_batches(
          data, self.mesh, c.batch_size, self.data_key, epoch, step - epoch * data.steps_per_epoch))
      run = lambda s, b: p.train_step_raw(s, self.teacher_vars, self.weights, self.data_key, b)
    else:
      from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel
      batches = self._to_global(self._checked(input_pipeline.train_batches(
          data.builder, c.dataset.train_split, global_batch=c.batch_size, epoch=epoch,
          seed=c.seed, image_size=c.dataset.image_size,
          start_step=step - epoch * data.steps_per_epoch, shuffle_buffer=c.dataset.shuffle_buffer,
          host_threads=c.dataset.host_threads),
          c.dataset.train_split))
      run = lambda s, b: p.train_step(s, self.teacher_vars, self.weights, b)
    # Steps are dispatched asynchronously; their finite flags are read (one
    # device sync) at the points listed above.
    self.pending, t0, compile0 = [], time.time(), compile_clock.seconds()
    for batch in batches:
      state, metrics = run(state, batch)
      step += 1
      if data.path == "device":
        self._evaluate_ahead(state, step, end)
      self.pending.append((step, metrics))
      synced = step == self._next_stop(step - 1, end) or len(self.pending) >= self.max_chunk
      if synced:
        count = len(self.pending)
        self._check_finite(history)
        seconds = self._step_seconds(t0, compile0)
        self._adapt_chunk(count, seconds)
        t0, compile0 = time.time(), compile_clock.seconds()
      yield state, step, synced
    if step != end:
      raise RuntimeError(f"epoch {epoch + 1} ended at step {step}, expected {end}: the input "
                         "pipeline is short")

  def _evaluate_ahead(self, state, step, end):
    """At the epoch's last step of the in-memory path, dispatches the
    epoch's evaluation right behind the steps, before their results are
    read: the device runs it while the host reads and logs them, instead of
    idling until :meth:`_end_epoch` asks for it (nothing is read back here;
    the time in steps still ends when the steps' results are ready)."""
    epoch = end // self.data.steps_per_epoch  # 1-based
    if step == end and evaluates(self.config, epoch):
      self.evaluation_ahead = (end, self._evaluate(state))

  def _to_global(self, batches):
    return data_lib.to_global(batches, self.mesh)

  def _checked(self, batches, split):
    ds = self.config.dataset
    for batch in batches:
      data_lib.check_batch_labels(batch["label"], ds.num_classes, ds.name, split)
      yield batch

  def _check_finite(self, history):
    """Reads the finite flags of the steps dispatched since the last check."""
    flags = jax.device_get([(m["finite"], m["loss"]) for _, m in self.pending])
    for (step, _), (finite, loss) in zip(self.pending, flags):
      if not finite:
        self._diverged(step, float(loss), history)
    self.pending = []

  def _diverged(self, step, loss, history):
    spe = self.data.steps_per_epoch
    epoch = (step - 1) // spe + 1
    results = self.write_results(history, "diverged", {"diverged": {
        "step": step, "epoch": epoch, "loss": loss}})
    del results
    if workdir_lib.holds_training(self.workdir):
      advice = (f"The last good checkpoint in {self.workdir}/checkpoints is kept; nothing was "
                "exported. Lower --config.optimizer.lr or check the data and the teacher, then "
                "start in a new --workdir (or rerun here to retry from that checkpoint).")
    else:
      advice = ("No checkpoint was saved before it; nothing was exported. Lower "
                "--config.optimizer.lr or check the data and the teacher, then rerun (this "
                "--workdir holds nothing trained, so it takes the new config).")
    raise errors.DivergedError(
        f"diverged: the loss or a gradient is not finite at step {step} (epoch {epoch}): loss = "
        f"{loss}. {advice}")

  def _preempted(self, state, history, manager, step, interrupted=False):
    """Saves the step reached and stops: asked by SIGTERM (preempted, status
    143) or by Ctrl-C (``interrupted``, status 130)."""
    self._check_finite(history)  # never save a state that is not finite
    self._stop_unless_lock_held()
    self._save(manager, state, history, force=True)
    manager.wait_until_finished()
    if interrupted:
      self.write_results(history, "interrupted", {"interrupted_at_step": step})
      raise errors.InterruptedRunError(
          f"interrupted (Ctrl-C or SIGINT) at step {step}; checkpoint saved in "
          f"{self.workdir}/checkpoints. Rerun the same command to resume.")
    self.write_results(history, "preempted", {"preempted_at_step": step})
    raise errors.PreemptedError(
        f"stopped at step {step} on request (SIGTERM); checkpoint saved in "
        f"{self.workdir}/checkpoints. Rerun the same command to resume.")

  def _evaluate(self, state) -> dict:
    """The evaluation sums (``loss``, ``top1``, ``top5``, ``count``) over the
    evaluation split, as device arrays: nothing is read back here."""
    c, p, data = self.config, self.programs, self.data
    if data.path == "device":
      sums = p.evaluate_arrays(state.variables, *data.device_eval)
    else:
      if data.path == "host":
        batches, fn = data_lib.host_eval_batches(data, self.mesh, c.eval_batch_size), p.eval_step_raw
      else:
        from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel
        batches = self._checked(input_pipeline.eval_batches(
            data.builder, c.dataset.eval_split, global_batch=c.eval_batch_size,
            image_size=c.dataset.image_size, host_threads=c.dataset.host_threads),
            c.dataset.eval_split)
        fn = p.eval_step
      sums = None
      for batch in data_lib.to_global(batches, self.mesh):
        out = fn(state.variables, batch)
        sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
    return sums

  def _learning_rate(self, epoch) -> float:
    """recipe.learning_rate of the 1-based ``epoch`` as a float (every epoch's
    computed at once, on first use)."""
    if epoch not in self.learning_rates:
      epochs = range(1, max(self.config.num_epochs, epoch) + 1)
      rates = jax.vmap(lambda e: recipe.learning_rate(self.config, e))(jnp.asarray(epochs))
      self.learning_rates = dict(zip(epochs, map(float, jax.device_get(rates))))
    return self.learning_rates[epoch]

  def _save(self, manager, state, history, **kwargs):
    """``ckpt_lib.save``; with several processes, the workdir removed during
    it ends each process with status 4 (rldjax/train/save_watchdog.py)."""
    def stopped():
      cause = (f"[Errno {errno.ENOENT}] the workdir was removed, or its {run_lock.LOCK_NAME} "
               f"deleted, while the run saved a checkpoint: '{self.workdir}'")
      message = storage_failure_message(self.workdir, cause)
      if distributed.is_primary():
        results_lib.record_failure(self.workdir, "storage_failed", message)
      return message
    with save_watchdog.lock_watched(self.lock.path, stopped):
      return ckpt_lib.save(manager, state, history, **kwargs)

  def _stop_unless_lock_held(self):
    """The run's lock file is its claim on the workdir, checked before each
    checkpoint and each epoch's writes. Deleted: the workdir was removed (or
    the lock deleted) under the run, and the run stops (a storage failure,
    status 4) instead of writing into a directory that Orbax would recreate without
    config.json, inputs.json or a lock, where another run could start.
    Taken over: another launch found no heartbeat for long (this process
    was suspended, or its host cut off) and runs there now; this one stops
    (status 2) without writing anything more (an asynchronous save already
    under way may still land; tests/test_checkpoint.py)."""
    def check():
      lost = self.lock.lost()
      if lost is not None and lost != "deleted":
        raise errors.LockLostError(
            f"{run_lock.LOCK_NAME} of workdir {self.workdir} is no longer this run's: {lost} "
            "(a launch takes a lock over when its holder sent no heartbeat for long: was this "
            "process suspended, or its host cut off?). This run stops without writing more "
            "there; the other launch goes on from the checkpoints.")
      return lost
    lost = distributed.on_primary(check)
    if lost is not None:
      raise FileNotFoundError(errno.ENOENT, f"the workdir was removed, or its "
                              f"{run_lock.LOCK_NAME} deleted, while the run wrote to it",
                              self.workdir)

  def _log_progress(self, step, epoch, sums, writer):
    """The training loss of the epoch so far (``sums``: the state's epoch
    sums, read), the learning rate and the steps per second since the last
    such record: TensorBoard and the log."""
    total = self.data.steps_per_epoch * self.config.num_epochs
    loss = sums["loss"] / max(sums["steps"], 1)
    done_steps, train0 = self.rate_mark
    rate = (step - done_steps) / max(self.train_time - train0, 1e-9)
    writer.write(step, {"train/loss": loss, "train/lr": self._learning_rate(epoch + 1)})
    logging.info("step %d/%d  epoch %d  train loss %.4f  %.1f steps/s  ETA %.0fs", step, total,
                 epoch + 1, loss, rate, (total - step) / max(rate, 1e-9))
    self.rate_mark = (step, self.train_time)

  def _end_epoch(self, state, history, epoch, manager, writer):
    """The epoch's evaluation, history record, checkpoint and writes. What
    needs no evaluation result (the lock check; the epoch's training metrics,
    read, logged and written) is done while the evaluation runs."""
    c = self.config
    eval_sums = None
    if evaluates(c, epoch + 1):
      # Dispatched at the epoch's last step (_evaluate_ahead), unless this
      # session resumed at the epoch's end or the splits are not on the device.
      ahead, self.evaluation_ahead = self.evaluation_ahead, None
      end = (epoch + 1) * self.data.steps_per_epoch
      eval_sums = ahead[1] if ahead is not None and ahead[0] == end else self._evaluate(state)
      # Dispatched before anything is read back. It replaces `best` alone, so
      # the rest of the state is read below without waiting for it.
      state = state.replace(best=self.programs.best_after_evaluation(
          state.best, state.params, state.batch_stats, eval_sums, np.int32(epoch + 1)))
    sums, step = jax.device_get((state.epoch_sums, state.step))
    step = int(step)
    self._stop_unless_lock_held()
    self._log_progress(step, epoch, sums, writer)
    eval_sums = jax.device_get(eval_sums)  # waits for the evaluation
    steps = max(float(sums["steps"]), 1.0)
    record = {"epoch": epoch + 1, "step": step}
    if eval_sums is not None:
      count = float(eval_sums["count"])
      record.update(top1=100.0 * float(eval_sums["top1"]) / count,
                    top5=100.0 * float(eval_sums["top5"]) / count,
                    test_loss=float(eval_sums["loss"]) / count)
    record.update(train_loss=float(sums["loss"]) / steps, train_ce=float(sums["ce"]) / steps,
                  train_accuracy=100.0 * float(sums["accuracy"]) / steps,
                  lr=self._learning_rate(epoch + 1))
    history = history + [record]
    if (epoch + 1) % c.checkpoint.every_epochs == 0 or epoch + 1 == c.num_epochs:
      self._save(manager, state, history, force=True,
                 metrics={"top1": record["top1"]} if eval_sums is not None else None)
      self.history = history  # what the same command resumes from (close() waits for it)
    self.write_results(history, "running", throttle=True)
    if eval_sums is None:
      writer.write(step, {"train/epoch_loss": record["train_loss"]})
      logging.info("epoch %d/%d  train loss %.4f  (not evaluated: config.eval_last_epochs=%d)",
                   epoch + 1, c.num_epochs, record["train_loss"], c.eval_last_epochs)
      return state, history
    writer.write(step, {"test/top1": record["top1"], "test/top5": record["top5"],
                        "test/loss": record["test_loss"], "train/epoch_loss": record["train_loss"]})
    logging.info("epoch %d/%d  train loss %.4f  test top-1 %.2f  top-5 %.2f  (best %.2f, %d "
                 "examples)", epoch + 1, c.num_epochs, record["train_loss"], record["top1"],
                 record["top5"], results_lib.best_record(history)["top1"], int(count))
    return state, history
