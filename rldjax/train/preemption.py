"""Stopping on SIGTERM (how TPU/cloud preemption and schedulers stop a job)
with a checkpoint of the step reached.

With one process a SIGTERM handler sets a flag that the loop reads after every
device call. With several, JAX's preemption notifier catches the signal and
its sync point (``multihost_utils.reached_preemption_sync_point``), asked after
every device call (the same sequence of calls on every process), becomes true
on every process at the same call, so all of them save the same step. The
handler is installed for the duration of a run only and the previous one
restored after.
"""
from __future__ import annotations

import signal
import threading

import jax
from absl import logging


class PreemptionWatcher:
  """``with PreemptionWatcher() as watcher: ... if watcher.requested(step): ...``"""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    self._multi = jax.process_count() > 1
    self._calls = 0

  def _handler(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving a checkpoint and stopping", signum)
    self._flag.set()

  def __enter__(self):
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def requested(self, step: int) -> bool:
    """True (on every process, at the same call) once a stop was asked for.
    Call it after every device call, with the step reached."""
    del step
    if self._multi:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      self._calls += 1  # consecutive ids: the sync point is agreed in these units
      return bool(multihost_utils.reached_preemption_sync_point(self._calls))
    return self._flag.is_set()
