"""run.lock's heartbeat: a lock left on another host is taken over once its
heartbeat stops, and a lock taken over is not the loser's to remove (a run
whose lock was taken over: tests/test_training.py)."""
import json
import os
import socket
import threading
import time

import pytest

from rldjax import errors, run_lock


@pytest.fixture(autouse=True)
def short_watch(monkeypatch):
  """A lock judged stale by its age is watched for 0.3 s of a 15 s interval
  here, not 2 intervals (30 s)."""
  monkeypatch.setattr(run_lock, "CONFIRM_HEARTBEATS", 0.02)


def _other_host_lock(path, age, heartbeat_seconds=15.0):
  holder = {"host": "another-host", "pid": 4242, "started": "2026-12-05 09:00:00",
            "token": "theirs"}
  if heartbeat_seconds is not None:
    holder["heartbeat_seconds"] = heartbeat_seconds
  path.write_text(json.dumps(holder))
  then = time.time() - age
  os.utime(path, (then, then))


def test_the_holder_touches_its_lock_until_it_releases_it(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
  path = tmp_path / run_lock.LOCK_NAME
  lock = run_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  try:
    holder = json.loads(path.read_text())
    assert holder["heartbeat_seconds"] == 0.05 and holder["token"] == lock.token
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    deadline = time.time() + 10
    while os.path.getmtime(path) < time.time() - 60 and time.time() < deadline:
      time.sleep(0.05)
    assert os.path.getmtime(path) > time.time() - 60  # touched again
    assert lock.lost() is None
  finally:
    lock.release()
  assert not path.exists() and not lock._beating.is_alive()  # pylint: disable=protected-access


def test_the_heartbeat_goes_on_after_a_touch_that_failed(tmp_path, monkeypatch, caplog):
  """A failed touch (a network file system's hiccup) is reported and tried
  again; a heartbeat that stopped there would let another host take a live
  run's lock over."""
  monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
  failures, utime = [0], os.utime

  def flaky_utime(path, *args, **kwargs):
    if str(path).endswith(run_lock.LOCK_NAME) and failures[0] < 3:
      failures[0] += 1
      raise OSError(5, "Input/output error")
    return utime(path, *args, **kwargs)

  path = tmp_path / run_lock.LOCK_NAME
  lock = run_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  try:
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    monkeypatch.setattr(os, "utime", flaky_utime)
    deadline = time.time() + 10
    while os.path.getmtime(path) < time.time() - 60 and time.time() < deadline:
      time.sleep(0.05)
    assert failures[0] == 3 and os.path.getmtime(path) > time.time() - 60  # touched again
    assert lock._beating.is_alive()  # pylint: disable=protected-access
  finally:
    lock.release()
  assert "could not touch the lock" in caplog.text and "Input/output error" in caplog.text
  assert caplog.text.count("could not touch the lock") == 1
  assert "touched the lock" in caplog.text and not path.exists()


def test_a_lock_that_cannot_be_read_for_a_moment_is_still_the_runs(tmp_path, monkeypatch,
                                                                   caplog):
  """A read that fails (a network file system's hiccup) is not a lost lock:
  the run went on being told its lock was replaced, and stopped with status
  2; its heartbeat stopped for good."""
  monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
  path = tmp_path / run_lock.LOCK_NAME
  lock = run_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  try:
    def failing_open(file, *args, **kwargs):
      if str(file) == str(path):
        raise OSError(5, "Input/output error")
      return open(file, *args, **kwargs)

    with monkeypatch.context() as patched:
      patched.setattr(run_lock, "open", failing_open, raising=False)
      assert lock.lost() is None
      time.sleep(0.3)  # several beats that cannot read the lock
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    deadline = time.time() + 10
    while os.path.getmtime(path) < time.time() - 60 and time.time() < deadline:
      time.sleep(0.05)
    assert os.path.getmtime(path) > time.time() - 60  # the heartbeat went on
    assert lock.lost() is None
    path.unlink()
    assert lock.lost() == "deleted"
  finally:
    lock.release()
  assert "could not read the lock" in caplog.text and "Input/output error" in caplog.text


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
  """A full disk fails the lock's write after the file was created: the empty
  file was left, and the rerun after freeing space was refused for 10 s."""
  def full_disk(obj, f):
    raise OSError(28, "No space left on device")

  with monkeypatch.context() as patched:
    patched.setattr(run_lock.json, "dump", full_disk)
    with pytest.raises(OSError, match="No space left"):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
  assert not (tmp_path / run_lock.LOCK_NAME).exists()
  with run_lock.WorkdirLock(str(tmp_path)):
    pass


def test_a_lock_on_another_host_is_taken_over_once_its_heartbeat_stops(tmp_path, caplog):
  path = tmp_path / run_lock.LOCK_NAME
  _other_host_lock(path, age=100)  # 100 s < 12 x 15 s: it may still run
  with pytest.raises(errors.WorkdirError, match=(
      r"in use by process 4242 on host another-host \(since 2026-12-05 09:00:00; last heartbeat "
      r"1\d\d s ago; it is taken over once no heartbeat came for 180 s; lock file")):
    run_lock.WorkdirLock(str(tmp_path)).acquire()
  assert run_lock.lock_holder_state(str(tmp_path)).startswith(
      "held by process 4242 on another-host since 2026-12-05 09:00:00; last heartbeat 1")
  _other_host_lock(path, age=200)
  assert run_lock.lock_holder_state(str(tmp_path)).startswith(
      "gone: process 4242 on another-host sent no heartbeat for 2")
  with run_lock.WorkdirLock(str(tmp_path)):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  assert "taking over the stale lock" in caplog.text and "sent no heartbeat for 2" in caplog.text
  # A lock of a version without heartbeats cannot be judged from another host.
  _other_host_lock(path, age=3600, heartbeat_seconds=None)
  with pytest.raises(errors.WorkdirError, match=r"another-host \(since 2026-12-05 09:00:00; lock"):
    run_lock.WorkdirLock(str(tmp_path)).acquire()
  assert run_lock.lock_holder_state(str(tmp_path)) == (
      "held by process 4242 on another-host since 2026-12-05 09:00:00")


def _touch_meanwhile(path, every, content=None, clock_behind=0.0):
  """A thread that touches ``path`` every ``every`` s (with a clock
  ``clock_behind`` s behind), or replaces its content once."""
  stop = threading.Event()

  def touch():
    while not stop.wait(every):
      if content is not None:
        path.write_text(content)
        return
      os.utime(path, (time.time() - clock_behind, time.time() - clock_behind))

  thread = threading.Thread(target=touch)
  thread.start()
  return stop, thread


def test_a_lock_that_looks_stale_but_is_still_touched_is_refused(tmp_path, monkeypatch, caplog):
  """The lock's age is this host's clock against the file's modification
  time (the holder's clock, or a file server's): where they disagree by
  minutes, a running run's lock looked stale and was taken over. A launch
  now watches it for 2 intervals on its own clock first."""
  monkeypatch.setattr(run_lock, "CONFIRM_HEARTBEATS", 2)
  path = tmp_path / run_lock.LOCK_NAME
  _other_host_lock(path, age=3600, heartbeat_seconds=0.2)
  stop, thread = _touch_meanwhile(path, 0.1, clock_behind=3600)
  try:
    with pytest.raises(errors.WorkdirError, match=(
        r"in use by process 4242 on host another-host: its heartbeat goes on, though by this "
        r"host's clock it is 3\d\d\d s old \(the clocks of this host and of the file system")):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    stop.set()
    thread.join()
  assert json.loads(path.read_text())["token"] == "theirs"
  assert "watching it for 0.4 s before taking it over" in caplog.text
  # Once that heartbeat stops: taken over after the watch.
  started = time.monotonic()
  with run_lock.WorkdirLock(str(tmp_path)):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  assert time.monotonic() - started >= 0.4
  assert "taking over the stale lock" in caplog.text


def test_a_lock_taken_by_another_launch_while_it_is_watched_is_judged_again(tmp_path):
  path = tmp_path / run_lock.LOCK_NAME
  _other_host_lock(path, age=3600)
  fresh = json.dumps({"host": "third-host", "pid": 7, "started": "now", "token": "third",
                      "heartbeat_seconds": 15})
  stop, thread = _touch_meanwhile(path, 0.1, content=fresh)
  try:
    with pytest.raises(errors.WorkdirError, match=r"in use by process 7 on host third-host \(since "
                       r"now; last heartbeat 0 s ago"):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    stop.set()
    thread.join()
  assert json.loads(path.read_text())["token"] == "third"


def test_a_lock_taken_over_is_left_to_its_new_holder(tmp_path):
  path = tmp_path / run_lock.LOCK_NAME
  lock = run_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  _other_host_lock(path, age=0)
  assert lock.lost() == "taken over by process 4242 on another-host"
  lock.release()
  assert json.loads(path.read_text())["token"] == "theirs"  # not removed
  lock = run_lock.WorkdirLock(str(tmp_path))
  path.unlink()
  with lock:
    path.unlink()
    assert lock.lost() == "deleted"
    path.write_text("")
    assert lock.lost() == "replaced by an unreadable file"


def test_a_lock_taken_between_the_judgement_and_the_removal_is_left_alone(tmp_path, monkeypatch):
  """Two launches find the same stale lock: the first takes it over; the
  second, which judged the old file stale, must not delete the first's new
  lock (it did: both ran in the workdir), but find it held."""
  path = tmp_path / run_lock.LOCK_NAME
  _other_host_lock(path, age=3600)
  first = run_lock.WorkdirLock(str(tmp_path))
  real_gone = run_lock._gone  # pylint: disable=protected-access

  calls = []

  def first_takes_over_meanwhile(*args):
    why = real_gone(*args)
    calls.append(why)
    if len(calls) == 1:  # the other launch, between this one's judgement and its removal
      first.acquire()
    return why
  monkeypatch.setattr(run_lock, "_gone", first_takes_over_meanwhile)
  try:
    with pytest.raises(errors.WorkdirError, match=f"in use by process {os.getpid()}"):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
    assert first.lost() is None
    assert os.listdir(tmp_path) == [run_lock.LOCK_NAME]  # nothing left aside
  finally:
    first.release()


@pytest.mark.parametrize("differs", ["boot_id", "pid_namespace"])
def test_a_pid_of_another_machine_or_container_of_the_same_name_is_not_checked(
    tmp_path, caplog, differs):
  """Two machines may share a host name (cloned images), and containers run
  with host networking share the machine's: a pid there means nothing here
  (the container's launcher may even have this process's pid). Such a lock
  is judged by its heartbeat, as another host's; a live one was taken over."""
  path = tmp_path / run_lock.LOCK_NAME
  mine = dict(run_lock._pid_space())  # pylint: disable=protected-access
  assert set(mine) == {"boot_id", "pid_namespace"}  # Linux
  for pid in (os.getpid(), 2 ** 22 + 1):  # this pid; one that runs nowhere here
    holder = {"host": socket.gethostname(), "pid": pid, "started": "earlier", "token": "theirs",
              "heartbeat_seconds": 15, **mine, differs: "elsewhere"}
    path.write_text(json.dumps(holder))
    with pytest.raises(errors.WorkdirError, match=(
        f"in use by process {pid} on host {socket.gethostname()} \\(since earlier; last "
        r"heartbeat \d s ago; it is taken over once no heartbeat came for 180 s")):
      run_lock.WorkdirLock(str(tmp_path)).acquire()
  os.utime(path, (time.time() - 200, time.time() - 200))
  with run_lock.WorkdirLock(str(tmp_path)):
    assert json.loads(path.read_text())["token"] != "theirs"
  assert ("(another machine or container of that name: its pid cannot be checked here) sent no "
          "heartbeat for 2") in caplog.text
  # With the same boot and namespace, the pid is checked: one that does not run is gone.
  path.write_text(json.dumps({**holder, **mine}))
  with run_lock.WorkdirLock(str(tmp_path)):
    pass
  assert f"process {2 ** 22 + 1} on {socket.gethostname()}, no longer running" in caplog.text


@pytest.mark.parametrize("content", [b"[]", b"3", b'"text"', b"{", b"\xff\xfe{\x00"])
def test_a_lock_that_is_not_a_json_object_is_an_unreadable_one(tmp_path, content):
  """It crashed the launcher with an AttributeError (a traceback) unless it
  was not JSON at all: now it is held while young and taken over once old."""
  path = tmp_path / run_lock.LOCK_NAME
  path.write_bytes(content)
  with pytest.raises(errors.WorkdirError, match="is in use by process None"):
    run_lock.WorkdirLock(str(tmp_path)).acquire()
  assert run_lock.lock_holder_state(str(tmp_path)) == "held (lock unreadable)"
  old = time.time() - run_lock.UNREADABLE_LOCK_SECONDS - 1
  os.utime(path, (old, old))
  with run_lock.WorkdirLock(str(tmp_path)):
    assert json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("interval", [True, "15", -15, 0, None])
def test_a_heartbeat_interval_that_is_not_a_positive_number_is_never_judged_stale(
    tmp_path, interval):
  path = tmp_path / run_lock.LOCK_NAME
  _other_host_lock(path, age=10 ** 6, heartbeat_seconds=15)
  holder = json.loads(path.read_text())
  path.write_text(json.dumps({**holder, "heartbeat_seconds": interval}))
  os.utime(path, (time.time() - 10 ** 6, time.time() - 10 ** 6))
  with pytest.raises(errors.WorkdirError, match="in use by process 4242 on host another-host"):
    run_lock.WorkdirLock(str(tmp_path)).acquire()
