"""rldjax/train/save_watchdog.py: with several processes, a run's lock file
removed while a checkpoint is saved ends the process with status 4 and the
storage-failure line (the processes would wait in the save for one another);
with one process, nothing is watched. The hang it ends was seen with real
processes (its module docstring); here its decisions are checked one by one,
with ``os._exit`` recorded instead of taken."""
import threading
import time

import jax
import pytest

from rldjax.train import save_watchdog


@pytest.fixture
def exits(monkeypatch):
  """The statuses ``os._exit`` was called with (it returns instead)."""
  class Calls(list):
    def __init__(self):
      super().__init__()
      self.called = threading.Event()  # this test's own
  calls = Calls()

  def fake_exit(code):
    calls.append(code)
    calls.called.set()
  monkeypatch.setattr(save_watchdog.os, "_exit", fake_exit)
  return calls


def processes(monkeypatch, count, index):
  monkeypatch.setattr(jax, "process_count", lambda: count)
  monkeypatch.setattr(jax, "process_index", lambda: index)


def watchdogs():
  return [t for t in threading.enumerate() if t.name.startswith("save watchdog")]


def test_one_process_watches_nothing(tmp_path, monkeypatch, exits):
  lock = tmp_path / "run.lock"
  lock.write_text("{}")
  with save_watchdog.lock_watched(str(lock), lambda: "never", interval=0.01):
    assert not watchdogs()
    lock.unlink()
    time.sleep(0.1)
  assert exits == []


@pytest.mark.parametrize("index", [0, 1])
def test_a_lock_removed_during_the_save_ends_the_process_with_status_4(
    tmp_path, monkeypatch, exits, capsys, index):
  processes(monkeypatch, 2, index)
  lock = tmp_path / "run.lock"
  lock.write_text("{}")
  asked = []

  def stopped():
    asked.append(time.time())
    return f"storage failed in {tmp_path}: the workdir was removed"
  with save_watchdog.lock_watched(str(lock), stopped, interval=0.05):
    assert len(watchdogs()) == 1
    time.sleep(0.2)
    assert exits == []  # present: nothing happens
    removed = time.time()
    lock.unlink()
    assert exits.called.wait(5)
  assert exits == [4] and len(asked) == 1
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"error: storage failed in {tmp_path}: the workdir was removed")
  # Missing at two checks in a row; process 0 (JAX's coordination service)
  # then waits two intervals more, so that its peers end first.
  assert asked[0] - removed >= (0.05 if index == 1 else 0.15)


def test_a_lock_missing_at_one_check_or_unreadable_is_not_removed(tmp_path, monkeypatch, exits):
  """Missing at one check only (a takeover renames the old lock aside for an
  instant), or unreadable (a network file system's ESTALE or EIO): nothing."""
  processes(monkeypatch, 2, 1)
  lock = tmp_path / "run.lock"
  lock.write_text("{}")
  answers = [FileNotFoundError, None, OSError, FileNotFoundError, None, OSError, OSError,
             PermissionError, FileNotFoundError, None, None]
  checked, stat = threading.Event(), save_watchdog.os.stat

  def flaky_stat(path, **kwargs):
    if str(path) != str(lock):
      return stat(path, **kwargs)
    answer = answers.pop(0) if answers else None
    if not answers:
      checked.set()
    if answer is not None:
      raise answer(path)
    return stat(path)
  monkeypatch.setattr(save_watchdog.os, "stat", flaky_stat)
  with save_watchdog.lock_watched(str(lock), lambda: "stopped", interval=0.01):
    assert checked.wait(5)
  assert exits == []


def test_a_description_that_fails_still_ends_the_process(tmp_path, monkeypatch, exits, capsys):
  processes(monkeypatch, 2, 1)
  lock = tmp_path / "run.lock"
  lock.write_text("{}")

  def stopped():
    raise OSError(5, "Input/output error")
  with save_watchdog.lock_watched(str(lock), stopped, interval=0.02):
    lock.unlink()
    assert exits.called.wait(5)
  assert exits == [4]
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"error: storage failed: {lock} disappeared while the run saved a checkpoint (and "
      "describing it failed: OSError: [Errno 5] Input/output error)")
