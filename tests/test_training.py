"""End-to-end training in-process: resume equality, per-epoch metrics across a
resume, corrupt checkpoints (newest and best), divergence, bad labels, honest
exports under a tie, one experiment per workdir, the device/host data paths,
the streaming path, schedules."""
import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import digits as digits_config
from rldjax import distributed, errors, export, machine, models, run_lock
from rldjax.data import augment, builders
from rldjax.train import checkpoint as ckpt_lib, data as data_lib
from rldjax.train import config as config_lib, loop, optim, programs, step as step_lib
from rldjax.train import workdir as workdir_lib
from rldjax.train.recipe import Recipe
from rldjax.train.state import TrainState
from tests.evaluation_check import check_evaluate_arrays
from tests.image_folder import write_image_folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  builders.load_builder("rldjax_digits", str(path))  # prepared offline
  return str(path)


def digits_teacher_variables(seed):
  """Initial digits/resnet14 variables: jitted (one compilation, not one per
  operation), from an rbg key as the launcher's (threefry initialisers take
  ~5x longer to compile on XLA:CPU)."""
  module = models.create("digits/resnet14")
  return jax.device_get(jax.jit(lambda k: module.init(k, jnp.zeros((1, 8, 8, 3)), train=False))(
      jax.random.key(seed, impl="rbg")))


@pytest.fixture(scope="module")
def teacher_export(tmp_path_factory):
  """An (untrained) digits teacher, exported as the converter would."""
  path = tmp_path_factory.mktemp("teacher") / "export"
  export.save_model(str(path), "digits/resnet14", digits_teacher_variables(3))
  return str(path)


def small_config(data_dir, teacher, method="rld", epochs=2):
  c = digits_config.get_config(f"method={method},teacher={teacher},epochs={epochs}")
  c.dataset.data_dir = data_dir
  c.batch_size = 256  # 5 steps per epoch
  c.checkpoint.every_steps = 3
  c.warmup_epochs = 2
  c.optimizer.decay_epochs = (1,)
  return c


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_dir, teacher_export):
  """``straight_run(method, epochs)``: the workdir and results of an
  uninterrupted run of ``small_config(method, epochs)``, trained once per
  module and shared by the tests that compare against it. A test that
  changes a run's files works on a copy (:func:`copy_run`)."""
  runs = {}

  def get(method="rld", epochs=2):
    if (method, epochs) not in runs:
      path = tmp_path_factory.mktemp(f"straight_{method}_{epochs}") / "run"
      result = loop.train_and_evaluate(small_config(data_dir, teacher_export, method, epochs),
                                       str(path))
      assert result["finished"]
      runs[method, epochs] = (path, result)
    return runs[method, epochs]
  return get


def copy_run(source, destination):
  shutil.copytree(source, destination)
  return destination


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_same_export(a, b):
  ta, na, va = export.load_model(str(a))
  tb, nb, vb = export.load_model(str(b))
  assert (ta, na) == (tb, nb)
  for x, y in zip(leaves(va), leaves(vb)):
    np.testing.assert_array_equal(x, y)


def evaluation_of_export(config, export_dir):
  """(top-1 %, mean loss) of an export on the run's in-memory evaluation
  split, by the run's evaluation program."""
  data = data_lib.load(config, step_lib.data_mesh(jax.devices()))
  _, _, variables = export.load_model(str(export_dir))
  sums = jax.device_get(programs.build(config, data.steps_per_epoch).evaluate_arrays(
      variables, *data.device_eval))
  count = float(sums["count"])
  return 100.0 * float(sums["top1"]) / count, float(sums["loss"]) / count


def read_json(path):
  with open(path) as f:
    return json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, data_dir, teacher_export,
                                                   straight_run, monkeypatch):
  config = small_config(data_dir, teacher_export, epochs=3)
  straight_dir, straight = straight_run("rld", 3)
  monkeypatch.chdir(tmp_path)
  first = loop.train_and_evaluate(config, "resumed", stop_after_epochs=1)  # a relative workdir
  assert first["status"] == "stopped" and first["epochs_completed"] == 1
  # Lose the end-of-epoch checkpoint: the rerun resumes mid-epoch 1 (step 3).
  ckpts = tmp_path / "resumed" / "checkpoints"
  shutil.rmtree(ckpts / "5")
  resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))  # the same, absolute
  assert resumed["finished"] and resumed["epochs_completed"] == 3
  assert_same_export(straight_dir / "export" / "last", tmp_path / "resumed" / "export" / "last")
  assert_same_export(straight_dir / "export" / "best", tmp_path / "resumed" / "export" / "best")
  # Every per-epoch figure, the train loss of the resumed epoch included.
  assert straight["history"] == resumed["history"]
  results = read_json(tmp_path / "resumed" / "results.json")
  assert results["best_top1"] == max(h["top1"] for h in results["history"])
  assert list(straight_dir.glob("events.out.tfevents*"))


def test_a_session_on_another_machine_is_reported_and_recorded(tmp_path, data_dir,
                                                              teacher_export, monkeypatch,
                                                              caplog):
  """XLA's results depend on the machine (on CPU, the cores the process may
  use: rldjax.machine), so a run resumed elsewhere is not bit-identical to an
  uninterrupted one. machine.json keeps the machine that started the run; a
  session on another one says so in its log and in results.json, and the
  record stays once the run is back on the first."""
  config = small_config(data_dir, teacher_export, epochs=3)
  workdir = tmp_path / "run"
  first = loop.train_and_evaluate(config, str(workdir), stop_after_epochs=1)
  here = machine.numerics(jax.devices())
  assert here["usable cores"] == len(os.sched_getaffinity(0)) and here["devices"] == 1
  assert read_json(workdir / "machine.json") == {"first": here, "others": []}
  assert "machine_changes" not in first

  monkeypatch.setattr(machine, "numerics", lambda devices: {**here, "usable cores": 1000})
  caplog.clear()
  elsewhere = loop.train_and_evaluate(config, str(workdir), stop_after_epochs=1)
  change = [f"usable cores: {here['usable cores']!r} then, 1000 now"]
  assert elsewhere["epochs_completed"] == 2 and elsewhere["machine_changes"] == [change]
  assert ("resumes the run in " + str(workdir) + " on another machine than the one that "
          "started it (" + change[0] + ")") in caplog.text, caplog.text

  monkeypatch.undo()
  caplog.clear()
  back = loop.train_and_evaluate(config, str(workdir))
  assert back["finished"] and back["machine_changes"] == [change]
  assert "another machine" not in caplog.text
  assert read_json(workdir / "machine.json") == {"first": here, "others": [change]}


def test_a_damaged_machine_record_is_set_aside_and_replaced(tmp_path, caplog):
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)  # the workdir holds something trained
  (tmp_path / "machine.json").write_text('{"first": {"jax"')
  here = {"jax": "1", "usable cores": 2}
  assert workdir_lib.check_machine(str(tmp_path), here) == {"this session": [], "recorded": []}
  assert "machine.json cannot be read; recording this session's machine" in caplog.text
  assert (tmp_path / "machine.json.unreadable").read_text() == '{"first": {"jax"'
  assert read_json(tmp_path / "machine.json") == {"first": here, "others": []}
  other = {"jax": "2", "usable cores": 2, "devices": 4}
  expected = ["jax: '1' then, '2' now", "devices: '<absent>' then, 4 now"]
  assert workdir_lib.check_machine(str(tmp_path), other) == {"this session": expected,
                                                             "recorded": [expected]}
  assert workdir_lib.check_machine(str(tmp_path), other)["recorded"] == [expected]  # once


def test_evaluating_only_the_last_epochs_trains_the_same(tmp_path, data_dir, teacher_export):
  """config.eval_last_epochs=2 of 4: the same training, one history record per
  epoch (the first two without evaluation), export/best the best evaluated
  epoch, and a resume from a checkpoint of an unevaluated epoch."""
  config = small_config(data_dir, teacher_export, epochs=4)
  every = loop.train_and_evaluate(config, str(tmp_path / "every"))
  config.eval_last_epochs = 2
  last2 = loop.train_and_evaluate(config, str(tmp_path / "last2"), stop_after_epochs=1)
  assert last2["status"] == "stopped" and last2["best_top1"] is None
  last2 = loop.train_and_evaluate(config, str(tmp_path / "last2"))
  assert last2["finished"] and len(last2["history"]) == 4
  train_fields = ("epoch", "step", "train_loss", "train_ce", "train_accuracy", "lr")
  for a, b in zip(every["history"][:2], last2["history"][:2]):
    assert b == {k: a[k] for k in train_fields}
  assert every["history"][2:] == last2["history"][2:]
  best = max(every["history"][2:], key=lambda h: h["top1"])  # the first one on a tie
  assert (last2["best_epoch"], last2["best_top1"]) == (best["epoch"], best["top1"])
  assert last2["last_top1"] == every["last_top1"]
  meta = export.read_metadata(str(tmp_path / "last2" / "export" / "best"))
  assert (meta["epoch"], meta["top1"]) == (best["epoch"], best["top1"])
  assert_same_export(tmp_path / "every" / "export" / "last", tmp_path / "last2" / "export" / "last")
  if best["epoch"] == every["best_epoch"]:
    assert_same_export(tmp_path / "every" / "export" / "best",
                       tmp_path / "last2" / "export" / "best")
  assert read_json(tmp_path / "last2" / "history.json") == last2["history"]
  # Which epochs are evaluated may change between sessions (the training does
  # not): the finished run, rerun with every epoch evaluated, is as it was.
  config.eval_last_epochs = 0
  assert loop.train_and_evaluate(config, str(tmp_path / "last2"))["history"] == last2["history"]


def test_full_disk_stops_the_run_and_the_same_command_continues_exactly(
    tmp_path, data_dir, teacher_export, straight_run, monkeypatch):
  """The disk fills up at the 4th checkpoint (step 9, epoch 2): the run stops
  with a StorageError (exit status 4) and results.json says so; once there is
  space, the same call resumes from step 6 and ends as an uninterrupted run."""
  config = small_config(data_dir, teacher_export, epochs=3)
  straight_dir, straight = straight_run("rld", 3)
  real, saves = ckpt_lib.save, []

  def full_disk(*args, **kwargs):
    saves.append(int(args[1].step))
    if len(saves) == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(*args, **kwargs)
  monkeypatch.setattr(ckpt_lib, "save", full_disk)
  with pytest.raises(errors.StorageError, match=r"No space left on device\. The run stopped; "
                     r".*rerun the same command to resume") as failed:
    loop.train_and_evaluate(config, str(tmp_path / "full"))
  assert failed.value.exit_code == 4 and saves == [3, 5, 6, 9]
  results = read_json(tmp_path / "full" / "results.json")
  assert results["status"] == "storage_failed" and not results["finished"]
  assert results["error"] == str(failed.value)
  assert not (tmp_path / "full" / "run.lock").exists()
  monkeypatch.setattr(ckpt_lib, "save", real)
  resumed = loop.train_and_evaluate(config, str(tmp_path / "full"))
  assert resumed["finished"] and resumed["status"] == "finished" and "error" not in resumed
  assert resumed["history"] == straight["history"]
  for name in ("last", "best"):
    assert_same_export(straight_dir / "export" / name, tmp_path / "full" / "export" / name)


def test_a_storage_failure_says_whether_a_checkpoint_is_left_to_resume_from(tmp_path):
  """Judged from the workdir when the run stops (a workdir removed under a
  running run, which then stopped with status 4, holds none)."""
  def message():
    return loop.storage_failure_message(str(tmp_path), "No space left on device")
  assert message().endswith("The run stopped with no complete checkpoint in the workdir (none "
                            "was written yet, or the workdir was removed while the run wrote to "
                            "it). Free space (or fix the permissions), then rerun the same "
                            "command: it starts the run again.")
  (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp").mkdir(parents=True)  # being written
  assert "no complete checkpoint" in message()
  assert ckpt_lib.complete_steps(str(tmp_path / "checkpoints")) == []
  (tmp_path / "checkpoints" / "6").mkdir()
  assert ckpt_lib.complete_steps(str(tmp_path / "checkpoints")) == [6]
  assert message() == (f"storage failed in {tmp_path}: No space left on device. The run "
                       "stopped; its complete checkpoints are kept. Free space (or fix the "
                       "permissions), then rerun the same command to resume.")
  # Removed under the run: nothing to free or fix.
  removed = "[Errno 2] the workdir was removed, or its run.lock deleted, while the run wrote to it"
  assert loop.storage_failure_message(str(tmp_path), removed).endswith(
      "its complete checkpoints are kept. Rerun the same command to resume.")
  shutil.rmtree(tmp_path / "checkpoints")
  assert loop.storage_failure_message(str(tmp_path / "gone"), removed).endswith(
      "while the run wrote to it). Rerun the same command: it starts the run again.")


def test_a_workdir_removed_under_the_run_is_a_storage_failure_whatever_fails_next(
    tmp_path, data_dir, teacher_export, monkeypatch):
  """rm -rf of a running run's workdir made Orbax's next save fail with a
  ValueError (`No ArrayMetadata found ...`): a traceback with status 1. The
  run's own lock file is gone with it, which says what happened."""
  config = small_config(data_dir, teacher_export, epochs=2)

  def removed_then_save(*args, **kwargs):
    shutil.rmtree(tmp_path / "gone")
    raise ValueError("No ArrayMetadata found for process_index=0 in the checkpoint directory")
  monkeypatch.setattr(ckpt_lib, "save", removed_then_save)
  with pytest.raises(errors.StorageError, match=(
      r"storage failed in .*gone: \[Errno 2\] the workdir was removed while the run wrote to it "
      r"\(ValueError: No ArrayMetadata found .*\): .*The run stopped with no complete "
      r"checkpoint")) as failed:
    loop.train_and_evaluate(config, str(tmp_path / "gone"))
  assert failed.value.exit_code == 4

  def save_fails_while_removed(*args, **kwargs):  # the removal still deleting files
    threading.Timer(0.3, shutil.rmtree, (tmp_path / "going",)).start()
    raise ValueError("Save failed: 1/1 params are missing .zarray in checkpoint")
  monkeypatch.setattr(ckpt_lib, "save", save_fails_while_removed)
  with pytest.raises(errors.StorageError, match=(
      r"storage failed in .*going: \[Errno 2\] the workdir was removed while the run wrote to "
      r"it \(ValueError: Save failed: 1/1 params are missing")):
    loop.train_and_evaluate(config, str(tmp_path / "going"))
  monkeypatch.setattr(ckpt_lib, "save", lambda *a, **k: (_ for _ in ()).throw(ValueError("bug")))
  with pytest.raises(ValueError, match="^bug$"):  # with the workdir in place: not storage
    loop.train_and_evaluate(config, str(tmp_path / "kept"))


def test_a_process_other_than_0_reports_a_removed_workdir_as_the_storage_failure(
    tmp_path, data_dir, teacher_export, monkeypatch):
  """Only process 0 of a multi-process run writes its files. When the shared
  workdir was removed and process 0 stopped on it (status 4), process 1
  learnt of it as a collective that failed and ended with status 1 and a line
  that another process had stopped (by hand, 1 or 2 of 4 tries, where the
  removal raced a save). With the workdir gone, or gone within a second (the
  removal may still be deleting files when process 0 stops), that failure is
  now this storage failure (status 4) there too; with the workdir in place
  it stays what it was. Here as process 1 of one, its collective failing as
  gloo's does."""
  config = small_config(data_dir, teacher_export, epochs=2)
  monkeypatch.setattr(distributed, "is_primary", lambda: False)

  def peer_gone(self, stop_after_epochs, remove_after):
    del stop_after_epochs
    if remove_after is not None:  # seconds: the removal still deleting files when it failed
      threading.Timer(remove_after, shutil.rmtree, (self.workdir,)).start()
    raise RuntimeError("UNAVAILABLE: Connection closed by peer [127.0.0.1]:45678\nmore")
  for name, remove_after in (("gone", 0.0), ("going", 0.3)):
    monkeypatch.setattr(loop._Run, "run", lambda self, n, r=remove_after: peer_gone(self, n, r))  # pylint: disable=protected-access
    with pytest.raises(errors.StorageError, match=(
        rf"storage failed in .*{name}: \[Errno 2\] the workdir was removed while the run wrote to "
        r"it \(here: RuntimeError: UNAVAILABLE: Connection closed by peer \[127.0.0.1\]:45678\): "
        r".*The run stopped with no complete checkpoint")) as failed:
      loop.train_and_evaluate(config, str(tmp_path / name))
    assert failed.value.exit_code == 4
  monkeypatch.setattr(loop._Run, "run", lambda self, n: peer_gone(self, n, None))  # pylint: disable=protected-access
  t0 = time.monotonic()
  with pytest.raises(RuntimeError, match="^UNAVAILABLE: Connection closed by peer"):
    loop.train_and_evaluate(config, str(tmp_path / "kept"))
  assert time.monotonic() - t0 >= loop.REMOVAL_GRACE_SECONDS  # it looked, then gave up


def test_a_run_whose_lock_file_disappears_stops_instead_of_writing_on(
    tmp_path, data_dir, teacher_export, monkeypatch):
  """rm -rf of a running run's workdir, at some moments, let the run write
  on into the directory Orbax recreated and finish with status 0, without
  its config.json, inputs.json or lock. The lock file is checked every
  epoch: here it is deleted during the first save."""
  config = small_config(data_dir, teacher_export, epochs=3)
  real = ckpt_lib.save

  def lock_deleted(*args, **kwargs):
    lock = tmp_path / "run" / run_lock.LOCK_NAME
    if lock.exists():
      lock.unlink()
    return real(*args, **kwargs)
  monkeypatch.setattr(ckpt_lib, "save", lock_deleted)
  with pytest.raises(errors.StorageError, match=(
      r"\[Errno 2\] the workdir was removed, or its run.lock deleted, while the run wrote to it: "
      r".* its complete checkpoints are kept\.")) as failed:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert failed.value.exit_code == 4
  assert ckpt_lib.complete_steps(str(tmp_path / "run" / "checkpoints")) != []
  monkeypatch.setattr(ckpt_lib, "save", real)
  assert loop.train_and_evaluate(config, str(tmp_path / "run"))["finished"]


def test_a_run_whose_lock_is_taken_over_stops_without_writing_on(
    tmp_path, data_dir, teacher_export, monkeypatch):
  """A run suspended for longer than the stale time loses its lock to a new
  launch; when it wakes, it must not write into the other launch's workdir:
  before its next checkpoint (here the next step's, mid-epoch) it stops with
  status 2, leaving the lock, the results and the checkpoints as the other
  launch has them."""
  config = small_config(data_dir, teacher_export, epochs=3)
  config.checkpoint.every_steps = 1
  workdir = tmp_path / "run"
  real = ckpt_lib.save
  taken = {}

  def taken_over_during_first_save(manager, state, history, *args, **kwargs):
    out = real(manager, state, history, *args, **kwargs)
    if not taken:
      manager.wait_until_finished()
      (workdir / run_lock.LOCK_NAME).write_text(json.dumps(  # another launch's now
          {"host": "another-host", "pid": 4242, "token": "theirs", "heartbeat_seconds": 15}))
      taken.update({name: (workdir / name).read_bytes()
                    for name in ("run.lock", "results.json") if (workdir / name).exists()})
      taken["steps"] = ckpt_lib.complete_steps(str(workdir / "checkpoints"))
    return out
  monkeypatch.setattr(ckpt_lib, "save", taken_over_during_first_save)
  with pytest.raises(errors.LockLostError, match=(
      f"run.lock of workdir {workdir} is no longer this run's: taken over by process 4242 on "
      r"another-host \(.*\)\. This run stops without writing more there")) as stopped:
    loop.train_and_evaluate(config, str(workdir))
  assert stopped.value.exit_code == 2
  assert (workdir / "run.lock").read_bytes() == taken["run.lock"]
  if "results.json" in taken:
    assert (workdir / "results.json").read_bytes() == taken["results.json"]
  else:
    assert not (workdir / "results.json").exists()
  assert ckpt_lib.complete_steps(str(workdir / "checkpoints")) == taken["steps"]
  assert not (workdir / "export").exists()


def test_unexpected_stops_say_so_in_results_and_the_same_command_continues_exactly(
    tmp_path, data_dir, teacher_export, straight_run, monkeypatch):
  """A bug at the end of epoch 1 of a new run, then Ctrl-C at the end of
  epoch 3 of the resumed one (epoch 2's progress write is throttled), then
  Ctrl-C while epoch 3's checkpoint is being saved: each is re-raised,
  results.json says ``failed`` then ``interrupted`` with the error and the
  epochs the checkpoints keep (never ``running``, never an epoch the next
  session does not resume from), the lock is released, and the same call then
  ends as an uninterrupted run. A rerun of the finished run that fails leaves
  it recorded as finished."""
  config = small_config(data_dir, teacher_export, epochs=3)
  straight_dir, straight = straight_run("rld", 3)
  workdir = tmp_path / "run"
  real_end_epoch, real_save = loop._Run._end_epoch, ckpt_lib.save  # pylint: disable=protected-access

  def fail_at_end_of(epoch, err):
    def end_epoch(self, state, history, index, *args):
      if index + 1 == epoch:
        raise err
      return real_end_epoch(self, state, history, index, *args)
    monkeypatch.setattr(loop._Run, "_end_epoch", end_epoch)  # pylint: disable=protected-access

  def fail_saving(epoch, err):
    def save(manager, state, history, *args, **kwargs):
      if len(history) == epoch:
        raise err
      return real_save(manager, state, history, *args, **kwargs)
    monkeypatch.setattr(loop._Run, "_end_epoch", real_end_epoch)  # pylint: disable=protected-access
    monkeypatch.setattr(ckpt_lib, "save", save)

  for inject, epoch, err, status, error in (
      (fail_at_end_of, 1, RuntimeError("injected bug"), "failed", "RuntimeError: injected bug."),
      (fail_at_end_of, 3, KeyboardInterrupt(), "interrupted", "KeyboardInterrupt."),
      (fail_saving, 3, KeyboardInterrupt(), "interrupted", "KeyboardInterrupt.")):
    inject(epoch, err)
    with pytest.raises(type(err)):
      loop.train_and_evaluate(config, str(workdir))
    results = read_json(workdir / "results.json")
    assert results["status"] == status and not results["finished"]
    assert results["error"].startswith(error) and "rerun the same command" in results["error"]
    assert results["epochs_completed"] == len(results["history"]) == epoch - 1
    assert not (workdir / "run.lock").exists()
  monkeypatch.setattr(ckpt_lib, "save", real_save)
  resumed = loop.train_and_evaluate(config, str(workdir))
  assert resumed["status"] == "finished" and "error" not in resumed
  assert resumed["history"] == straight["history"]
  for name in ("last", "best"):
    assert_same_export(straight_dir / "export" / name, workdir / "export" / name)

  def late_bug(*args, **kwargs):
    raise RuntimeError("late bug")
  finished = read_json(workdir / "results.json")
  monkeypatch.setattr(loop, "_export", late_bug)  # a rerun of the finished run fails
  with pytest.raises(RuntimeError, match="late bug"):
    loop.train_and_evaluate(config, str(workdir))
  assert read_json(workdir / "results.json") == finished  # still finished, times and all


def test_results_read_running_from_the_start_of_training(tmp_path, data_dir, teacher_export,
                                                         monkeypatch):
  """results.json says "running" before the first epoch ends: a run killed
  outright in its first epoch (hours on ImageNet) leaves a record that the
  report lists, where it left none; and a resumed run reads "running", not
  the status its last session stopped with."""
  config = small_config(data_dir, teacher_export, epochs=2)
  workdir = tmp_path / "run"
  real_end_epoch = loop._Run._end_epoch  # pylint: disable=protected-access
  seen = []

  def end_epoch(self, state, history, index, *args):
    seen.append(read_json(workdir / "results.json"))  # before this epoch's own write
    if len(seen) == 1:
      raise KeyboardInterrupt
    return real_end_epoch(self, state, history, index, *args)
  monkeypatch.setattr(loop._Run, "_end_epoch", end_epoch)  # pylint: disable=protected-access
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(config, str(workdir))
  assert seen[0]["status"] == "running" and not seen[0]["finished"]
  assert seen[0]["epochs_completed"] == 0 and seen[0]["history"] == []
  assert read_json(workdir / "results.json")["status"] == "interrupted"
  finished = loop.train_and_evaluate(config, str(workdir))
  assert seen[1]["status"] == "running" and "error" not in seen[1]
  assert seen[1]["wall_time_s"] >= seen[0]["wall_time_s"]  # the sessions' times add up
  assert finished["status"] == "finished" and len(finished["history"]) == 2


@pytest.mark.parametrize("eval_batch_size,n", [(16, 37), (16, 32), (512, 37)])
def test_in_memory_evaluation_counts_every_example_once(eval_batch_size, n):
  check_evaluate_arrays(eval_batch_size, n)  # full batches, then the remainder


def test_device_and_host_paths_train_identically(tmp_path, data_dir, teacher_export,
                                                 straight_run):
  config = small_config(data_dir, teacher_export, method="kd", epochs=1)
  assert config.dataset.in_memory
  device_dir, device = straight_run("kd", 1)
  config.dataset.in_memory = False
  host = loop.train_and_evaluate(config, str(tmp_path / "host"))
  assert device["history"] == host["history"]
  assert_same_export(device_dir / "export" / "last", tmp_path / "host" / "export" / "last")


def test_corrupt_newest_checkpoint_is_moved_aside_and_replaced(tmp_path, data_dir, teacher_export,
                                                              straight_run, caplog):
  config = small_config(data_dir, teacher_export, epochs=2)
  workdir = tmp_path / "run"
  first = loop.train_and_evaluate(config, str(workdir), stop_after_epochs=1)
  ckpt_dir = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  assert steps == [3, 5], steps  # the mid-epoch save and the end-of-epoch one
  for path in (ckpt_dir / "5").rglob("*"):  # truncate every file of the newest
    if path.is_file():
      path.write_bytes(b"")
  resumed = loop.train_and_evaluate(config, str(workdir))
  assert "corrupt" in caplog.text and "step 5" in caplog.text
  assert resumed["finished"]
  moved = list((workdir / "checkpoints_corrupt").iterdir())
  assert len(moved) == 1 and moved[0].name.startswith("5.")  # kept, not deleted
  straight_dir, straight = straight_run("rld", 2)
  assert_same_export(straight_dir / "export" / "last", workdir / "export" / "last")
  assert straight["history"] == resumed["history"]
  caplog.clear()
  with caplog.at_level("INFO"):
    again = loop.train_and_evaluate(config, str(workdir))  # a rerun of a finished run
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING
              and "corrupt" in r.getMessage()]
  assert "the run had finished (2 of 2 epochs): nothing left to train" in caplog.text
  # The resumed session added its times to the first one's; the rerun of the
  # finished run trained nothing and leaves them as they were.
  times = ("wall_time_s", "train_time_s", "compile_time_s")
  assert resumed["wall_time_s"] > first["wall_time_s"]
  assert resumed["train_time_s"] > first["train_time_s"] > 0
  assert [again[k] for k in times] == [resumed[k] for k in times]
  assert again["history"] == resumed["history"] and again["status"] == "finished"


def test_corrupt_best_checkpoint_does_not_break_the_end(tmp_path, data_dir, teacher_export,
                                                       straight_run):
  config = small_config(data_dir, teacher_export, epochs=2)
  finished_dir, done = straight_run("rld", 2)
  workdir = copy_run(finished_dir, tmp_path / "run")
  best_step = max(done["history"], key=lambda h: h["top1"])["step"]
  for path in (workdir / "checkpoints" / str(best_step)).rglob("*"):
    if path.is_file():
      path.write_bytes(b"\0" * 7)
  again = loop.train_and_evaluate(config, str(workdir))
  assert again["finished"] and again["history"] == done["history"]
  meta = export.read_metadata(str(workdir / "export" / "best"))
  assert (meta["epoch"], meta["top1"]) == (done["best_epoch"], done["best_top1"])


def test_export_best_is_the_first_best_epoch_on_a_tie(tmp_path, data_dir, teacher_export,
                                                      monkeypatch):
  """Forced tie: epochs 2 and 3 both score the best top-1; export/best must be
  the state at the end of epoch 2, not the final state."""
  scores = iter([50.0, 80.0, 80.0, 70.0])
  real = loop._Run._evaluate

  def fixed_score(self, state):  # evaluation sums whose top-1 is the next score
    out = dict(real(self, state))
    out["top1"], out["count"] = jnp.float32(next(scores)), jnp.float32(100.0)
    return out
  monkeypatch.setattr(loop._Run, "_evaluate", fixed_score)
  config = small_config(data_dir, teacher_export, method="vanilla", epochs=4)
  config.teacher.checkpoint = ""
  result = loop.train_and_evaluate(config, str(tmp_path / "tie"))
  assert (result["best_epoch"], result["best_top1"]) == (2, 80.0)
  meta = export.read_metadata(str(tmp_path / "tie" / "export" / "best"))
  assert (meta["epoch"], meta["top1"]) == (2, 80.0)
  monkeypatch.setattr(loop._Run, "_evaluate", real)
  config.num_epochs = 2  # same schedule (decay_epochs is explicit), stopped after epoch 2
  loop.train_and_evaluate(config, str(tmp_path / "two"))
  assert_same_export(tmp_path / "tie" / "export" / "best", tmp_path / "two" / "export" / "last")


def test_divergence_stops_with_the_step_keeps_the_last_good_checkpoint(tmp_path, data_dir,
                                                                       teacher_export):
  config = small_config(data_dir, teacher_export, method="vanilla", epochs=3)
  config.teacher.checkpoint = ""
  config.optimizer.decay_rate = 1e8  # the LR explodes after epoch 1
  workdir = tmp_path / "run"
  with pytest.raises(errors.DivergedError, match=r"not finite at step \d+ \(epoch 2\)"):
    loop.train_and_evaluate(config, str(workdir))
  results = read_json(workdir / "results.json")  # strict JSON: no bare NaN
  assert results["status"] == "diverged" and not results["finished"]
  assert results["diverged"]["epoch"] == 2
  assert not (workdir / "export").exists()
  read_json(workdir / "history.json")
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert 5 <= max(steps) < results["diverged"]["step"]  # only good steps were saved


def test_a_launch_that_trained_nothing_leaves_the_workdir_to_the_corrected_command(
    tmp_path, data_dir):
  """A launch that stops before its first checkpoint (a bad split, a divergence
  at the first steps) records its config, yet holds no experiment: the
  corrected command takes the workdir over, and the earlier records move to
  superseded/. Once something is trained, another config is refused."""
  config = small_config(data_dir, "", method="vanilla", epochs=1)
  workdir = tmp_path / "run"
  config.dataset.eval_split = "tset"
  with pytest.raises(errors.DataError, match=r"config.dataset.eval_split: 'tset' is not a split"):
    loop.train_and_evaluate(config, str(workdir))
  config.dataset.eval_split = "test"
  config.optimizer.lr = 1e6  # diverges in epoch 1, before the first checkpoint (its end)
  config.checkpoint.every_steps = 1000
  with pytest.raises(errors.DivergedError, match=r"\(epoch 1\).*No checkpoint was saved"):
    loop.train_and_evaluate(config, str(workdir))
  diverged = read_json(workdir / "results.json")
  assert diverged["status"] == "diverged"
  config.optimizer.lr = 0.05
  start = time.time()
  result = loop.train_and_evaluate(config, str(workdir))
  elapsed = time.time() - start
  assert result["finished"] and result["config"]["optimizer"]["lr"] == 0.05
  assert "diverged" not in result
  assert read_json(workdir / "config.json")["optimizer"]["lr"] == 0.05
  assert read_json(workdir / "superseded" / "results.json") == diverged
  assert result["wall_time_s"] <= elapsed  # its own time, not the diverged launch's too
  assert len(list(workdir.glob("events.out.tfevents*"))) == 1
  config.optimizer.lr = 0.1
  with pytest.raises(errors.WorkdirError, match=r"config.optimizer.lr: 0.05 -> 0.1"):
    loop.train_and_evaluate(config, str(workdir))


def test_splits_are_checked_before_training(data_dir):
  builder = builders.load_builder("rldjax_digits", data_dir)
  builders.check_split(builder, "train[:80%]", "config.dataset.train_split")
  builders.check_split(builder, "train[:10]+test", "config.dataset.eval_split")
  with pytest.raises(errors.DataError, match=r"config.dataset.train_split: 'trian' is not a "
                     r"split of dataset 'rldjax_digits': Unknown split 'trian'"):
    builders.check_split(builder, "trian", "config.dataset.train_split")
  with pytest.raises(errors.DataError, match=r"eval_split: 'test\[:200%\]' is not a split.*"
                     r"Its splits: test, train\."):
    builders.check_split(builder, "test[:200%]", "config.dataset.eval_split")
  with pytest.raises(errors.DataError, match=r"eval_split: 'test\[5:3\]' selects no example"):
    builders.check_split(builder, "test[5:3]", "config.dataset.eval_split")


def test_diverged_teacher_export_is_refused(tmp_path, data_dir):
  variables = digits_teacher_variables(0)
  variables["params"]["fc"]["bias"] = variables["params"]["fc"]["bias"] * np.nan
  with pytest.raises(ValueError, match="non-finite"):
    export.save_model(str(tmp_path / "nan"), "digits/resnet14", variables)
  # A file written by something else: loading it names the file.
  export.save_model(str(tmp_path / "nan"), "digits/resnet14",
                    jax.tree_util.tree_map(np.zeros_like, variables))
  npz = tmp_path / "nan" / export.VARIABLES_FILE
  with np.load(npz) as f:
    arrays = dict(f)
  arrays["params/fc/bias"] = arrays["params/fc/bias"] * np.nan
  np.savez(npz, **arrays)
  with pytest.raises(errors.TeacherError, match=f"{tmp_path / 'nan'}.*non-finite"):
    export.load_model(str(tmp_path / "nan"))
  config = small_config(data_dir, str(tmp_path / "nan"), method="kd", epochs=1)
  with pytest.raises(errors.TeacherError, match="non-finite"):
    loop.train_and_evaluate(config, str(tmp_path / "student"))


def test_labels_outside_num_classes_stop_before_training(tmp_path, data_dir):
  config = small_config(data_dir, "", method="vanilla", epochs=1)
  config.dataset.num_classes = 5
  with pytest.raises(errors.DataError, match=r"rldjax_digits.*train.*10 values"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_other_experiment_in_the_same_workdir_is_refused(tmp_path, data_dir, teacher_export,
                                                        straight_run):
  copy_run(straight_run("kd", 1)[0], tmp_path / "run")  # a finished 1-epoch kd run
  other = small_config(data_dir, teacher_export, method="dkd", epochs=1)
  with pytest.raises(errors.WorkdirError, match=r"config.method: 'kd' -> 'dkd'"):
    loop.train_and_evaluate(other, str(tmp_path / "run"))
  # Cadence and data location may change; more epochs continue the run.
  more = small_config(data_dir, teacher_export, method="kd", epochs=2)
  more.log_every_steps = 7
  more.checkpoint.every_steps = 4
  result = loop.train_and_evaluate(more, str(tmp_path / "run"))
  assert result["finished"] and result["epochs_completed"] == 2
  fewer = small_config(data_dir, teacher_export, method="kd", epochs=1)
  with pytest.raises(errors.WorkdirError, match="2 epochs are already done"):
    loop.train_and_evaluate(fewer, str(tmp_path / "run"))
  (tmp_path / "a_file").write_text("not a workdir")
  with pytest.raises(errors.WorkdirError, match="a_file exists and is not a directory"):
    loop.train_and_evaluate(more, str(tmp_path / "a_file"))
  assert (tmp_path / "a_file").read_text() == "not a workdir"


def test_a_run_is_resumed_only_on_the_teacher_and_data_it_was_trained_on(
    tmp_path, data_dir, teacher_export, straight_run, monkeypatch, caplog):
  source, done = straight_run("kd", 1)
  run = copy_run(source, tmp_path / "run")
  recorded = read_json(run / "inputs.json")
  assert recorded[workdir_lib.TEACHER_WEIGHTS] == distributed.fingerprint(
      export.load_model(teacher_export)[2])
  # The teacher moved (same weights, another path): the run continues.
  moved = shutil.copytree(teacher_export, tmp_path / "moved_teacher")
  result = loop.train_and_evaluate(small_config(data_dir, str(moved), "kd", 2), str(run))
  assert result["finished"] and result["epochs_completed"] == 2
  assert result["history"][0] == done["history"][0]
  # Another teacher exported at that path (trained on, say): refused, nothing trained.
  shutil.rmtree(moved)
  export.save_model(str(moved), "digits/resnet14", digits_teacher_variables(4))
  before = {name: (run / name).read_bytes() for name in ("results.json", "history.json")}
  checkpoints = sorted(os.listdir(run / "checkpoints"))
  with pytest.raises(errors.WorkdirError, match=(
      r"trained on other inputs than this launch reads:\n  config.teacher.checkpoint weights "
      rf"\(CRC-32\): '{recorded[workdir_lib.TEACHER_WEIGHTS]}' when this workdir was trained, '")):
    loop.train_and_evaluate(small_config(data_dir, str(moved), "kd", 3), str(run))
  assert {name: (run / name).read_bytes() for name in before} == before
  assert sorted(os.listdir(run / "checkpoints")) == checkpoints
  # The dataset prepared again with one pixel changed: refused, naming the split.
  load_split = data_lib.in_memory.load_split

  def changed_pixel(builder, split):
    images, labels = load_split(builder, split)
    if split == "train":
      images = images.copy()
      images[7, 1, 2, 0] ^= 1
    return images, labels
  monkeypatch.setattr(data_lib.in_memory, "load_split", changed_pixel)
  with pytest.raises(errors.WorkdirError, match=r"\n  train split 'train' \(CRC-32\): '"):
    loop.train_and_evaluate(small_config(data_dir, teacher_export, "kd", 3), str(run))
  monkeypatch.undo()
  # A damaged record stops the run; a workdir from before inputs.json (or
  # whose record was deleted) gets one from this launch, with a warning.
  (run / "inputs.json").write_text('{"train split')
  with pytest.raises(errors.WorkdirError, match=r"inputs.json cannot be read \(.*delete it to "):
    loop.train_and_evaluate(small_config(data_dir, teacher_export, "kd", 3), str(run))
  (run / "inputs.json").unlink()
  result = loop.train_and_evaluate(small_config(data_dir, teacher_export, "kd", 3), str(run))
  assert result["finished"] and result["epochs_completed"] == 3
  assert "those of its earlier sessions cannot be checked" in caplog.text
  assert read_json(run / "inputs.json") == recorded


def test_a_damaged_results_json_is_set_aside_and_a_damaged_config_json_stops_the_run(
    tmp_path, data_dir, teacher_export, straight_run):
  source, done = straight_run("kd", 1)
  # results.json is a record: kept aside, rewritten from the checkpoints, and
  # the lost times of the earlier session are said to be lost.
  run = copy_run(source, tmp_path / "results")
  (run / "results.json").write_text('{"status": "finis')
  more = small_config(data_dir, teacher_export, method="kd", epochs=2)
  result = loop.train_and_evaluate(more, str(run))
  assert result["finished"] and result["epochs_completed"] == 2
  assert result["history"][0] == done["history"][0]
  assert result["times_incomplete"] is True
  assert read_json(run / "results.json")["times_incomplete"] is True
  assert (run / "results.json.unreadable").read_text() == '{"status": "finis'
  assert "times_incomplete" not in done
  # config.json is what the experiment is compared with: the run stops.
  run = copy_run(source, tmp_path / "config")
  (run / "config.json").write_text("[]")
  with pytest.raises(errors.WorkdirError, match=r"config.json cannot be read \(a JSON list"):
    loop.train_and_evaluate(more, str(run))
  assert (run / "config.json").read_text() == "[]"
  assert read_json(run / "results.json") == read_json(source / "results.json")


def test_an_unreadable_lock_is_taken_over_only_once_it_is_old(tmp_path, caplog):
  """A process killed between creating run.lock and writing it leaves an empty
  file: a lock being written is young, that one grows old."""
  lock_path = tmp_path / run_lock.LOCK_NAME
  lock_path.write_text("")
  with pytest.raises(errors.WorkdirError, match="is in use by process None"):
    run_lock.WorkdirLock(str(tmp_path)).acquire()
  old = os.path.getmtime(lock_path) - run_lock.UNREADABLE_LOCK_SECONDS - 1
  os.utime(lock_path, (old, old))
  with run_lock.WorkdirLock(str(tmp_path)):
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  assert "taking over the stale lock" in caplog.text and "unreadable" in caplog.text
  assert not lock_path.exists()


def test_a_storage_url_as_workdir_is_refused(tmp_path, data_dir, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = small_config(data_dir, "", method="vanilla", epochs=1)
  with pytest.raises(errors.WorkdirError, match="gs://bucket/run: storage URLs are not supported"):
    loop.train_and_evaluate(config, "gs://bucket/run")
  assert os.listdir(tmp_path) == []  # no local folder named gs:
  assert workdir_lib.local_path("runs/a") == str(tmp_path / "runs" / "a")


def test_a_lock_whose_pid_is_reused_is_taken_over(tmp_path, caplog):
  """A container restarted after a crash runs its launcher with the pid the
  lock names; another process may have been given that pid since. Neither
  holds the lock. A live process that started before the lock was written,
  or another thread of this process holding it, does."""
  lock_path = tmp_path / run_lock.LOCK_NAME
  me = {"host": socket.gethostname(), "pid": os.getpid(), "started": "earlier"}
  lock_path.write_text(json.dumps(me))  # this pid, but this process holds no lock
  with run_lock.WorkdirLock(str(tmp_path)):
    assert "this process's pid, not its lock" in caplog.text
    with pytest.raises(errors.WorkdirError, match=f"in use by process {os.getpid()}"):
      run_lock.WorkdirLock(str(tmp_path)).acquire()  # held by this process: refused
  assert not lock_path.exists()
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    time.sleep(1.5)
    holder = {"host": socket.gethostname(), "pid": sleeper.pid, "started": "now"}
    lock_path.write_text(json.dumps(holder))  # written after the process started: its lock
    with pytest.raises(errors.WorkdirError, match=f"in use by process {sleeper.pid}"):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
    hour_ago = time.time() - 3600  # written before the process started: a reused pid
    os.utime(lock_path, (hour_ago, hour_ago))
    with run_lock.WorkdirLock(str(tmp_path)):
      assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert "now belongs to a process started after the lock was last touched" in caplog.text
  finally:
    sleeper.kill()
    sleeper.wait()


def test_mock_cifar100_train_and_evaluate(tmp_path):
  config = config_lib.base_config()
  config_lib.apply_method(config, "vanilla")
  config.student.tag = "cifar/resnet8"
  config.batch_size = 8
  config.num_epochs = 1
  config.log_every_steps = 2
  config.dataset.download = True  # intercepted by mock_data: nothing is fetched
  with tfds.testing.mock_data(num_examples=20):
    results = loop.train_and_evaluate(config, str(tmp_path / "mock"))
  assert results["finished"]
  history = results["history"]
  assert len(history) == 1 and history[0]["step"] == 2  # 20 // 8 steps
  assert 0.0 <= history[0]["top1"] <= 100.0
  assert os.path.isdir(tmp_path / "mock" / "export" / "best")


def test_missing_dataset_message(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError, match="--config.dataset.data_dir"):
    builders.load_builder("cifar100", str(tmp_path))
  with pytest.raises(errors.DatasetNotFoundError, match="no dataset named 'cifar1000'.*"
                     "--config.dataset.name"):
    builders.load_builder("cifar1000", str(tmp_path))


def test_schedules():
  from rldjax.train import learning_rate
  c = config_lib.base_config()
  c.optimizer.update(lr=0.1, decay_epochs=(2, 4))
  assert [float(learning_rate(c, e)) for e in (1, 2, 3, 4, 5)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
  sched = optim.schedule(c, steps_per_epoch=10)
  assert [float(sched(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
  c.optimizer.update(decay_epochs=(5,), lr_warmup_epochs=4)
  assert float(learning_rate(c, 1)) == pytest.approx(0.025)
  assert float(learning_rate(c, 4)) == pytest.approx(0.1)
  c.optimizer.update(schedule="published_ldrld", decay_epochs=(30,), lr_warmup_epochs=20)
  assert float(learning_rate(c, 1)) == pytest.approx(0.005)
  assert float(learning_rate(c, 19)) == pytest.approx(0.095)   # 19/20
  assert float(learning_rate(c, 30)) == pytest.approx(0.095)   # nothing written: stays
  assert float(learning_rate(c, 31)) == pytest.approx(0.01)    # after the decay: exactly base·0.1


def _image_folder_config(root, epochs):
  config = config_lib.base_config()
  config_lib.apply_method(config, "vanilla")
  config.student.tag = "cifar/resnet8"
  config.dataset.update(name=f"image_folder:{root}", kind="imagenet", image_size=32,
                        num_classes=2, in_memory=False, shuffle_buffer=16)
  config.batch_size = 4
  config.num_epochs = epochs
  return config


def test_image_folder_streams_through_tf_data(tmp_path):
  """An ImageFolder (ROOT/<split>/<class>/<file>) trains on the streaming path,
  TFDS slices of its splits included; a resumed run must read the files it
  was trained on (their names and labels: their content is not checksummed)."""
  root = write_image_folder(tmp_path / "imgs", (("train", 6), ("test", 3)))
  config = _image_folder_config(root, 1)
  config.dataset.train_split = "train[:75%]"  # 9 of 12
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["finished"] and result["history"][0]["step"] == 2  # 9 // 4
  builder = builders.load_builder(f"image_folder:{root}")
  assert read_json(tmp_path / "run" / "inputs.json") == {
      "dataset (TFDS name/version)": "image_folder/1.0.0",
      "train split 'train[:75%]' (examples)": 9, "eval split 'test' (examples)": 6,
      "train split 'train[:75%]' (listing CRC-32)": builders.split_listing(builder, "train[:75%]"),
      "eval split 'test' (listing CRC-32)": builders.split_listing(builder, "test")}
  os.rename(root / "test" / "dog" / "2.png", root / "test" / "dog" / "7.png")
  config.num_epochs = 2
  with pytest.raises(errors.WorkdirError, match=(
      r"trained on other inputs than this launch reads:\n  eval split 'test' \(listing CRC-32\): "
      r"'[0-9a-f]{8}' when this workdir was trained, '[0-9a-f]{8}' now")):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  with pytest.raises(errors.DatasetNotFoundError, match="image_folder"):
    builders.load_builder(f"image_folder:{tmp_path / 'missing'}")


def test_streaming_run_resumed_mid_epoch_equals_uninterrupted_run(tmp_path):
  """The streaming path's batches are a function of (seed, epoch, step) too: a
  run resumed from a checkpoint in the middle of an epoch ends bit-identical
  to one that was not stopped."""
  root = write_image_folder(tmp_path / "imgs", (("train", 8), ("test", 3)))  # 4 steps an epoch
  config = _image_folder_config(root, 2)
  config.checkpoint.every_steps = 3
  straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  first = loop.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after_epochs=1)
  assert first["epochs_completed"] == 1
  steps = sorted(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [3, 4]
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")  # resume from step 3 of epoch 1
  resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert straight["finished"] and resumed["finished"]
  assert straight["history"] == resumed["history"]
  for name in ("last", "best"):
    assert_same_export(tmp_path / "straight" / "export" / name,
                       tmp_path / "resumed" / "export" / name)


def test_a_prepared_dataset_streams_and_resumes_with_other_host_threads(tmp_path):
  """ImageNet's path, a prepared TFDS dataset of JPEGs (rldjax_jpeg_images,
  built offline): a run resumed in the middle of an epoch, with another
  thread count for its pipeline (``dataset.host_threads`` may change: the
  batches do not), ends bit-identical to one that was not stopped."""
  from experiments.configs import imagenet  # pylint: disable=import-outside-toplevel
  config = imagenet.get_config("arch=ResNet18")  # README's command, "Streaming"
  config.dataset.update(name="rldjax_jpeg_images/small", data_dir=str(tmp_path / "data"),
                        eval_split="test", image_size=32, shuffle_buffer=16, host_threads=1)
  config.batch_size = config.eval_batch_size = 8  # 6 steps an epoch
  config.num_epochs = 2
  config.checkpoint.every_steps = 4
  straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  first = loop.train_and_evaluate(config, str(tmp_path / "resumed"), stop_after_epochs=1)
  assert first["epochs_completed"] == 1
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")  # resume from step 4 of epoch 1
  config.dataset.host_threads = 0
  resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert straight["finished"] and resumed["finished"]
  assert [h["step"] for h in straight["history"]] == [6, 12]
  assert straight["history"] == resumed["history"]
  for name in ("last", "best"):
    assert_same_export(tmp_path / "straight" / "export" / name,
                       tmp_path / "resumed" / "export" / name)
  inputs = read_json(tmp_path / "resumed" / "inputs.json")
  assert inputs["train split 'train' (examples)"] == 48
  assert inputs["eval split 'test' (examples)"] == 12


def test_several_steps_per_call_train_the_same_and_stop_on_divergence(tmp_path, data_dir,
                                                                      teacher_export):
  config = small_config(data_dir, teacher_export, method="kd", epochs=2)
  one = loop.train_and_evaluate(config, str(tmp_path / "one"))
  config.steps_per_call = 4  # a while_loop of up to 4 steps per device call
  chunked = loop.train_and_evaluate(config, str(tmp_path / "chunked"))
  assert [h["step"] for h in chunked["history"]] == [h["step"] for h in one["history"]]
  for a, b in zip(one["history"], chunked["history"]):
    assert a["top1"] == pytest.approx(b["top1"], abs=0.6)  # at most 2 of 359 examples
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
  _, _, va = export.load_model(str(tmp_path / "one" / "export" / "last"))
  _, _, vb = export.load_model(str(tmp_path / "chunked" / "export" / "last"))
  for x, y in zip(leaves(va), leaves(vb)):
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)
  # The last epoch's evaluation (dispatched with its last steps, before their
  # results are read) is that of the final state, on both paths.
  for name, result in (("one", one), ("chunked", chunked)):
    top1, loss = evaluation_of_export(config, tmp_path / name / "export" / "last")
    assert (result["history"][-1]["top1"], result["history"][-1]["test_loss"]) == (top1, loss)
  config.optimizer.decay_rate = 1e8  # the LR explodes after epoch 1
  with pytest.raises(errors.DivergedError, match=r"not finite at step \d+ \(epoch 2\)"):
    loop.train_and_evaluate(config, str(tmp_path / "diverging"))


def tensorboard_scalars(workdir):
  """{step: {tag: value}} of the run's TensorBoard event files (TFRecord
  frames: length, its CRC, the Event proto, its CRC), and the number of
  events that held each (step, tag)."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
  scalars, counts = {}, {}
  for path in sorted(workdir.glob("events.out.tfevents*")):
    data = path.read_bytes()
    at = 0
    while at < len(data):
      (length,) = np.frombuffer(data[at:at + 8], "<u8")
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + int(length)])
      at += 12 + int(length) + 4
      for value in event.summary.value:
        scalars.setdefault(event.step, {})[value.tag] = value.simple_value
        counts[event.step, value.tag] = counts.get((event.step, value.tag), 0) + 1
  return scalars, counts


def test_tensorboard_holds_every_epochs_scalars_once(tmp_path, data_dir, teacher_export):
  """Each epoch's end writes its training loss, learning rate and epoch loss
  (and, when evaluated, its test top-1/top-5/loss) once, equal to its
  history record; the steps logged mid-epoch write the loss so far and the
  learning rate."""
  config = small_config(data_dir, teacher_export, method="kd", epochs=3)  # 5 steps per epoch
  config.log_every_steps = 2
  config.eval_last_epochs = 2
  config.steps_per_call = 4
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  scalars, counts = tensorboard_scalars(tmp_path / "run")
  assert set(counts.values()) == {1}
  train = {"train/loss", "train/lr"}
  epoch_ends = {h["step"]: h for h in result["history"]}
  assert sorted(epoch_ends) == [5, 10, 15]
  assert set(scalars) == set(epoch_ends) | {2, 4, 6, 8, 12, 14}
  f32 = lambda x: float(np.float32(x))
  for step, tags in scalars.items():
    record = epoch_ends.get(step)
    if record is None:
      assert set(tags) == train
      continue
    test = {"test/top1", "test/top5", "test/loss"} if record["epoch"] > 1 else set()
    assert set(tags) == train | {"train/epoch_loss"} | test
    assert tags["train/loss"] == tags["train/epoch_loss"] == f32(record["train_loss"])
    assert tags["train/lr"] == f32(record["lr"])
    for tag in test:
      assert tags[tag] == f32(record[{"test/loss": "test_loss"}.get(tag, tag[5:])])


def test_precomputed_teacher_logits_train_as_running_the_teacher(tmp_path, data_dir,
                                                                teacher_export):
  config = small_config(data_dir, teacher_export, method="rld", epochs=2)
  live = loop.train_and_evaluate(config, str(tmp_path / "live"))
  config.teacher.precompute_logits = True
  pre = loop.train_and_evaluate(config, str(tmp_path / "pre"))
  assert [h["step"] for h in pre["history"]] == [h["step"] for h in live["history"]]
  for a, b in zip(live["history"], pre["history"]):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert a["top1"] == pytest.approx(b["top1"], abs=0.6)  # at most 2 of 359 examples
  _, _, va = export.load_model(str(tmp_path / "live" / "export" / "last"))
  _, _, vb = export.load_model(str(tmp_path / "pre" / "export" / "last"))
  for x, y in zip(leaves(va), leaves(vb)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  # A workdir recorded before the field existed resumes as precompute_logits=False.
  recorded = read_json(tmp_path / "live" / "config.json")
  del recorded["teacher"]["precompute_logits"]
  (tmp_path / "live" / "config.json").write_text(json.dumps(recorded))
  config.teacher.precompute_logits = False
  again = loop.train_and_evaluate(config, str(tmp_path / "live"))
  assert again["finished"] and again["history"] == live["history"]
  config.teacher.precompute_logits = True  # but a recorded False is not silently switched
  with pytest.raises(errors.WorkdirError, match="config.teacher.precompute_logits"):
    loop.train_and_evaluate(config, str(tmp_path / "live"))


def test_teacher_logits_program_covers_every_example(teacher_export):
  config = digits_config.get_config(f"method=kd,teacher={teacher_export}")
  config.teacher.precompute_logits = True
  config.eval_batch_size = 16  # 37 examples: two full batches and a remainder
  p = programs.build(config, steps_per_epoch=3)
  _, _, variables = export.load_model(teacher_export)
  images = np.random.default_rng(0).integers(0, 256, (37, 8, 8, 1)).astype(np.uint8)
  got = np.asarray(p.teacher_logits(variables, images))
  want = np.asarray(p.teacher.apply(variables, augment.train_images(images, None, "digits"),
                                    train=False))
  assert got.shape == (37, 10)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,in_memory", [
    ("cifar", True),  # augmented: the teacher's logits change every epoch
    ("digits", False)])
def test_precompute_logits_is_refused_where_it_would_be_wrong(kind, in_memory):
  config = digits_config.get_config("method=kd,teacher=/nonexistent")
  config.dataset.update(kind=kind, in_memory=in_memory)
  config.teacher.precompute_logits = True
  with pytest.raises(errors.ConfigError, match="config.teacher.precompute_logits"):
    config_lib.validate(config)


def test_loss_weights_are_run_time_arguments_of_one_program(data_dir, teacher_export):
  base = small_config(data_dir, teacher_export, method="rc", epochs=2)
  other = small_config(data_dir, teacher_export, method="rc", epochs=2)
  other.update(ce_weight=0.5, distill_weight=0.7, kd_weight=3.0)
  p = programs.build(other, steps_per_epoch=5)
  assert programs.build(base, steps_per_epoch=5) is p
  dropped = small_config(data_dir, teacher_export, method="rc", epochs=2)
  dropped.kd_weight = 0.0  # a term left out is another program
  assert programs.build(dropped, steps_per_epoch=5) is not p
  # The shared program with other's weights = a step compiled with other's constants.
  variables = p.init(jax.random.key(0, impl="rbg"))
  state = TrainState.create(variables["params"], variables["batch_stats"], p.tx,
                            jax.random.key(1, impl="rbg"))
  _, _, teacher = export.load_model(teacher_export)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((256, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 10, 256).astype(np.int32)}
  constants = step_lib.shard(step_lib.make_train_step(p.student, p.teacher, Recipe.from_config(
      other), p.tx, 5), p.mesh, n_replicated=2)
  want_state, want = constants(state, teacher, batch)
  got_state, got = p.train_step(state, teacher, Recipe.from_config(other).weights(), batch)
  for key in ("loss", "ce", "distill", "kd"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
  assert float(got["loss"]) == pytest.approx(0.5 * float(got["ce"]) + 0.5 * (  # warm-up 1/2
      0.7 * float(got["distill"]) + 3.0 * float(got["kd"])), rel=1e-5)
  for x, y in zip(leaves(got_state.params), leaves(want_state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_initial_state_program_equals_the_eager_initialisation():
  """programs.init_state: one replicated device call, bit-identical to
  initialising eagerly from key(seed) (variables) and fold_in(key(seed), 1)."""
  config = digits_config.get_config("method=kd,teacher=/nonexistent")
  p = programs.build(config, steps_per_epoch=5)
  for seed in (0, 7, 2**32 - 1):
    rng = jax.random.key(seed, impl="rbg")
    variables = p.init(rng)
    want = TrainState.create(variables["params"], variables["batch_stats"], p.tx,
                             jax.random.fold_in(rng, 1))
    got = p.init_state(np.uint32(seed))
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(got),
                           jax.device_get(want))
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(got))
  a, b = p.init_state(np.uint32(0)), p.init_state(np.uint32(1))
  assert not np.array_equal(*jax.device_get((a.rng, b.rng)))
  # The best model starts as its own copy (the steps donate the state's buffers).
  assert (a.params["fc"]["kernel"].unsafe_buffer_pointer()
          != a.best["params"]["fc"]["kernel"].unsafe_buffer_pointer())
