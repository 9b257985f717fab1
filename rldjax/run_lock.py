"""One process per workdir: ``<workdir>/run.lock``, and what it says of a run
recorded as running.

* :class:`WorkdirLock`: ``<workdir>/run.lock`` holds the host and pid of the
  process running there. A second process fails at once naming the workdir
  and the holder; a lock left by a dead process on the same host (its pid no
  longer runs, is this very process's pid without its lock, as in a
  container restarted after a crash, or belongs to a process started after
  the lock was written), or an unreadable one older than
  ``UNREADABLE_LOCK_SECONDS``, is taken over with a warning. In
  multi-process runs process 0 holds it for all.
* :func:`lock_holder_state`: whether the process a lock names may still run
  (``python -m experiments.report`` checks the runs whose results.json says
  "running": a process killed outright cannot update it).

Imports neither JAX nor TensorFlow (the report uses it).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time

from absl import logging

from rldjax.errors import WorkdirError

LOCK_NAME = "run.lock"
# A lock file is written as soon as it is created; one still unreadable after
# this long was left by a process that stopped in between.
UNREADABLE_LOCK_SECONDS = 10.0


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as err:
    return err.errno == errno.EPERM
  return True


def _start_time(pid: int) -> float | None:
  """When process ``pid`` started (seconds since the epoch), from Linux's
  /proc; None where that cannot be read."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
  except (OSError, ValueError, IndexError, StopIteration):
    return None


# The locks this process holds (absolute paths): a lock naming this process's
# pid is another thread's if listed here, and a dead incarnation's otherwise.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


def _gone(holder: dict, lock_path: str, lock_written: float) -> str | None:
  """Why the process ``holder`` names no longer holds the lock (None: it may).

  Only a holder on this host can be checked: its pid no longer runs; or it
  is this process's pid and this process holds no such lock (a container
  restarted after a crash starts its processes with the same pids); or the
  pid now belongs to a process started after the lock was written (the pid
  was reused)."""
  pid, host = holder.get("pid"), holder.get("host")
  if host != socket.gethostname() or not isinstance(pid, int):
    return None
  if pid == os.getpid():
    with _HELD_LOCK:
      held_here = os.path.abspath(lock_path) in _HELD
    return None if held_here else f"process {pid} on {host}: this process's pid, not its lock"
  if not _alive(pid):
    return f"process {pid} on {host}, no longer running"
  started = _start_time(pid)
  if started is not None and started > lock_written + 1.0:
    return f"pid {pid} on {host} now belongs to a process started after the lock was written"
  return None


class WorkdirLock:
  """``with WorkdirLock(workdir):`` — exclusive use of ``workdir`` by this process."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.held = False

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def _age(self) -> float:
    try:
      return time.time() - os.path.getmtime(self.path)
    except OSError:
      return 0.0

  def acquire(self) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if not holder:  # being written right now, or unreadable: look again
          time.sleep(0.2)
          holder = self._holder()
        pid, host = holder.get("pid"), holder.get("host")
        gone = _gone(holder, self.path, time.time() - self._age()) if holder else None
        if gone or (not holder and self._age() > UNREADABLE_LOCK_SECONDS):
          logging.warning("taking over the stale lock %s (%s)", self.path,
                          gone or "unreadable: its writer stopped while taking it")
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        raise WorkdirError(
            f"workdir {os.path.dirname(self.path)} is in use by process {pid} on host {host} "
            f"(since {holder.get('started', '?')}; lock file {self.path}). Wait for it, use "
            f"another --workdir, or delete the lock file if that process is gone.") from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self.held = True
      with _HELD_LOCK:
        _HELD.add(os.path.abspath(self.path))
      return
    raise WorkdirError(f"could not take the lock {self.path}")

  def release(self) -> None:
    if self.held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self.held = False
      with _HELD_LOCK:
        _HELD.discard(os.path.abspath(self.path))

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def lock_holder_state(workdir: str) -> str:
  """What ``<workdir>/run.lock`` says of the process recorded as running
  there: ``"no lock"`` (none holds the workdir), ``"gone: <why>"`` (its
  holder stopped without releasing it: killed, or aborted by the distributed
  service after a peer stopped), or ``"held by process P on H since S"`` (it
  may run; a holder on another host cannot be checked)."""
  lock = WorkdirLock(workdir)
  holder = lock._holder()  # pylint: disable=protected-access
  if not holder:
    return "no lock" if not os.path.exists(lock.path) else "held (lock unreadable)"
  gone = _gone(holder, lock.path, time.time() - lock._age())  # pylint: disable=protected-access
  if gone:
    return f"gone: {gone}"
  return (f"held by process {holder.get('pid')} on {holder.get('host')} since "
          f"{holder.get('started', '?')}")
