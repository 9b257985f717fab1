"""One process per workdir: ``<workdir>/run.lock``, and what it says of a run
recorded as running.

* :class:`WorkdirLock`: ``<workdir>/run.lock`` holds the host and pid of the
  process running there (with the machine's boot id and its pid namespace,
  where pids mean the same), and a token of its own; a thread of the holder
  touches the file every ``HEARTBEAT_SECONDS`` (its modification time is the
  holder's heartbeat). A second process fails at once naming the workdir,
  the holder and its last heartbeat; a lock left by a dead process is taken
  over with a warning: where its pid can be checked (same host name, boot
  and pid namespace), its pid no longer runs, is this very process's pid
  without its lock (restarted after a crash), or belongs to a process
  started after the lock's last heartbeat; elsewhere (a pod's job
  rescheduled on another host after its machine died, another machine of
  the same name, a container with host networking), no heartbeat came for
  ``STALE_HEARTBEATS`` intervals (the lock's age, by the launching host's
  clock), and none came while the launch watched it for
  ``CONFIRM_HEARTBEATS`` intervals (on its own clock: a holder that runs is
  never taken over because clocks disagree); an unreadable
  lock older than ``UNREADABLE_LOCK_SECONDS``; of two launches that find the
  same stale lock, one takes it over. :meth:`WorkdirLock.lost` says whether the
  lock is still this process's (a run checks it before writing on). In
  multi-process runs process 0 holds it for all.
* :func:`lock_holder_state`: whether the process a lock names may still run
  (``python -m experiments.report`` checks the runs whose results.json says
  "running": a process killed outright cannot update it), with its last
  heartbeat.

Imports neither JAX nor TensorFlow (the report uses it).
"""
from __future__ import annotations

import errno
import functools
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from rldjax.errors import WorkdirError

LOCK_NAME = "run.lock"
# A lock file is written as soon as it is created; one still unreadable after
# this long was left by a process that stopped in between.
UNREADABLE_LOCK_SECONDS = 10.0
# The holder touches its lock this often; a lock on another host that no
# heartbeat touched for STALE_HEARTBEATS of the holder's intervals is stale.
HEARTBEAT_SECONDS = 15.0
STALE_HEARTBEATS = 12
# A lock judged stale by its age is watched this many of its holder's
# intervals, on the launching host's own clock, before it is taken over: a
# holder that still runs touches it meanwhile, whatever the clocks say.
CONFIRM_HEARTBEATS = 2


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


def _heartbeat_seconds(holder: dict) -> float | None:
  """The holder's heartbeat interval (None: a lock of a version without one)."""
  seconds = holder.get("heartbeat_seconds")
  if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
    return None
  return float(seconds) if seconds > 0 else None


@functools.lru_cache(maxsize=None)
def _pid_space() -> tuple[tuple[str, str], ...]:
  """Where this process's pid means what it says (Linux): the machine's boot
  and this process's pid namespace (a container has its own)."""
  space = []
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      space.append(("boot_id", f.read().strip()))
  except OSError:
    pass
  try:
    space.append(("pid_namespace", os.readlink("/proc/self/ns/pid")))
  except OSError:
    pass
  return tuple(space)


def _pids_comparable(holder: dict) -> bool:
  """Whether the holder's pid can be checked from here: the same host name,
  and the same machine boot and pid namespace where the lock records them
  (two machines may share a name, and containers on one machine run with
  host networking share its name but not its pids)."""
  if holder.get("host") != socket.gethostname():
    return False
  mine = dict(_pid_space())
  return all(holder[key] == mine.get(key) for key in ("boot_id", "pid_namespace")
             if key in holder)


def _gone(holder: dict, lock_path: str, age: float) -> str | None:
  """Why the process ``holder`` names no longer holds the lock (None: it may).
  ``age``: seconds since the lock file was last touched (its last heartbeat).

  Where its pid can be checked (:func:`_pids_comparable`): its pid no longer
  runs; or it is this process's pid and this process holds no such lock (a
  process restarted in the same pid namespace, or in one that got the same
  number, after a crash); or the pid now belongs to a process started after
  the lock's last heartbeat (the pid was reused). Elsewhere (another host,
  machine or container): no heartbeat for ``STALE_HEARTBEATS`` of its
  intervals."""
  pid, host = holder.get("pid"), holder.get("host")
  if not _pids_comparable(holder):
    interval = _heartbeat_seconds(holder)
    if interval is not None and age > STALE_HEARTBEATS * interval:
      where = "" if host != socket.gethostname() else (
          " (another machine or container of that name: its pid cannot be checked here)")
      return (f"process {pid} on {host}{where} sent no heartbeat for {age:.0f} s (it touches its "
              f"lock every {interval:g} s)")
    return None
  if not isinstance(pid, int):
    return None
  if pid == os.getpid():
    with _HELD_LOCK:
      held_here = os.path.abspath(lock_path) in _HELD
    return None if held_here else f"process {pid} on {host}: this process's pid, not its lock"
  if not _alive(pid):
    return f"process {pid} on {host}, no longer running"
  started = _start_time(pid)
  if started is not None and started > time.time() - age + 1.0:
    return (f"pid {pid} on {host} now belongs to a process started after the lock was last "
            "touched")
  return None


def _parse(text: bytes) -> dict:
  """A lock file's holder; {} for one being written or unreadable (not a
  JSON object)."""
  try:
    holder = json.loads(text)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _heartbeat_note(holder: dict, age: float) -> str:
  """``; last heartbeat N s ago`` for a holder that sends them."""
  if _heartbeat_seconds(holder) is None:
    return ""
  return f"; last heartbeat {max(age, 0.0):.0f} s ago"  # < 0: another host's clock ahead


class WorkdirLock:
  """``with WorkdirLock(workdir):`` — exclusive use of ``workdir`` by this process."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.held = False
    self.token = uuid.uuid4().hex
    self._stop_beating = threading.Event()
    self._beating = None

  def _read(self) -> tuple[dict, os.stat_result | None]:
    """The lock's holder ({} if missing or unreadable) and the status (inode,
    modification time) of the file it was read from (None if missing), from
    one open file."""
    try:
      with open(self.path, "rb") as f:
        return _parse(f.read()), os.fstat(f.fileno())
    except OSError:
      return {}, None

  def _watch(self, holder: dict, judged: os.stat_result, age: float) -> str:
    """Watches a lock judged stale by its age alone (no heartbeat for
    ``STALE_HEARTBEATS`` intervals, by this host's clock against the file's
    modification time) for ``CONFIRM_HEARTBEATS`` of its holder's intervals,
    on this host's own clock: ``"still"`` (untouched: stale), ``"touched"``
    (its holder runs, and the clocks disagree) or ``"replaced"`` (released,
    or taken by another launch, meanwhile)."""
    interval = _heartbeat_seconds(holder)
    watch = CONFIRM_HEARTBEATS * interval
    logging.warning("the lock %s had no heartbeat for %.0f s (process %s on %s); watching it for "
                    "%g s before taking it over", self.path, age, holder.get("pid"),
                    holder.get("host"), watch)
    deadline = time.monotonic() + watch
    while (remaining := deadline - time.monotonic()) > 0:
      time.sleep(min(remaining, interval / 10))
      now, status = self._read()
      if status is None or now != holder or status.st_ino != judged.st_ino:
        return "replaced"
      if status.st_mtime_ns != judged.st_mtime_ns:
        return "touched"
    return "still"

  def _remove_stale(self, holder: dict, judged: os.stat_result | None) -> bool:
    """Removes the lock file if it is still the one judged stale (``holder``
    and ``judged``: its content and status then); False if another launch
    replaced it, or its holder touched it, meanwhile (it is then left in
    place). Renamed aside first, so that a lock taken by another launch
    between the judgement and the removal is never deleted (a new file may
    get the inode of the one removed: its content and modification time tell
    them apart)."""
    aside = f"{self.path}.{self.token}.stale"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    try:
      now = os.stat(aside)
      with open(aside, "rb") as f:
        content = _parse(f.read())
      if judged is not None and content == holder and (now.st_ino, now.st_mtime_ns) == (
          judged.st_ino, judged.st_mtime_ns):
        return True
      try:  # another launch's fresh lock: put it back, unless a third took the name
        os.link(aside, self.path)
      except FileExistsError:
        pass
      except OSError:  # no hard links (some FUSE file systems)
        os.rename(aside, self.path)
      return False
    finally:
      try:
        os.remove(aside)
      except FileNotFoundError:
        pass

  def acquire(self) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": self.token,
          "heartbeat_seconds": HEARTBEAT_SECONDS, **dict(_pid_space())}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder, status = self._read()
        if not holder:  # being written right now, or unreadable: look again
          time.sleep(0.2)
          holder, status = self._read()
        if status is None:  # released meanwhile
          continue
        pid, host = holder.get("pid"), holder.get("host")
        age = time.time() - status.st_mtime
        gone = _gone(holder, self.path, age) if holder else None
        if gone or (not holder and age > UNREADABLE_LOCK_SECONDS):
          if gone and not _pids_comparable(holder):
            seen = self._watch(holder, status, age)
            if seen == "touched":
              raise WorkdirError(
                  f"workdir {os.path.dirname(self.path)} is in use by process {pid} on host "
                  f"{host}: its heartbeat goes on, though by this host's clock it is {age:.0f} s "
                  f"old (the clocks of this host and of the file system holding {self.path} "
                  "disagree). Wait for it, or use another --workdir.") from None
            if seen == "replaced":
              continue
          if self._remove_stale(holder, status):
            logging.warning("taking over the stale lock %s (%s)", self.path,
                            gone or "unreadable: its writer stopped while taking it")
          continue
        stale = ""
        if not _pids_comparable(holder) and _heartbeat_seconds(holder) is not None:
          stale = (f"; it is taken over once no heartbeat came for "
                   f"{STALE_HEARTBEATS * _heartbeat_seconds(holder):g} s")
        raise WorkdirError(
            f"workdir {os.path.dirname(self.path)} is in use by process {pid} on host {host} "
            f"(since {holder.get('started', '?')}{_heartbeat_note(holder, age)}{stale}; lock "
            f"file {self.path}). Wait for it, use another --workdir, or delete the lock file if "
            "that process is gone.") from None
      try:
        with os.fdopen(fd, "w") as f:
          json.dump(me, f)
      except BaseException:  # a full disk: leave no empty lock behind
        try:
          os.remove(self.path)
        except OSError:
          pass
        raise
      self.held = True
      with _HELD_LOCK:
        _HELD.add(os.path.abspath(self.path))
      self._stop_beating.clear()
      self._beating = threading.Thread(target=self._beat, name=f"heartbeat {self.path}",
                                       daemon=True)
      self._beating.start()
      return
    raise WorkdirError(f"could not take the lock {self.path}")

  def _beat(self) -> None:
    """Touches the lock every HEARTBEAT_SECONDS while it is this process's. A
    touch that fails (a network file system's hiccup) is reported and tried
    again at the next beat: stopping would let another host take a live
    run's lock over once the stale time passed."""
    failing = False
    while not self._stop_beating.wait(HEARTBEAT_SECONDS):
      if self.lost() is not None:
        return
      try:
        os.utime(self.path)
      except OSError as err:
        if not failing:
          logging.warning("could not touch the lock %s (%s); trying again every %g s", self.path,
                          err, HEARTBEAT_SECONDS)
        failing = True
      else:
        if failing:
          logging.warning("touched the lock %s again", self.path)
        failing = False

  def lost(self) -> str | None:
    """None while ``run.lock`` is this lock's; else what became of it:
    ``"deleted"`` (the workdir was removed, or the lock file deleted) or
    ``"taken over by process P on H"`` (another launch judged it stale)."""
    if not self.held:
      return "not taken"
    try:
      with open(self.path, "rb") as f:
        holder = _parse(f.read())
    except FileNotFoundError:
      return "deleted"
    except OSError as err:  # a network file system's hiccup: the next check tells
      logging.warning("could not read the lock %s (%s); taken to be still this run's", self.path,
                      err)
      return None
    if holder.get("token") == self.token:
      return None
    if not holder:
      return "replaced by an unreadable file"
    return f"taken over by process {holder.get('pid')} on {holder.get('host')}"

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file, if it is still this
    lock's (a lock taken over by another launch is left to it)."""
    if self.held:
      self._stop_beating.set()
      if self._beating is not None and self._beating is not threading.current_thread():
        self._beating.join(timeout=5.0)
      if self.lost() is None:
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
  service after a peer stopped; on another host, no heartbeat for
  ``STALE_HEARTBEATS`` intervals), or ``"held by process P on H since S;
  last heartbeat N s ago"`` (it may run)."""
  lock = WorkdirLock(workdir)
  holder, status = lock._read()  # pylint: disable=protected-access
  if not holder:
    return "no lock" if status is None else "held (lock unreadable)"
  age = time.time() - status.st_mtime
  gone = _gone(holder, lock.path, age)
  if gone:
    return f"gone: {gone}"
  return (f"held by process {holder.get('pid')} on {holder.get('host')} since "
          f"{holder.get('started', '?')}{_heartbeat_note(holder, age)}")
