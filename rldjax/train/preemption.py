"""Stopping on SIGTERM (how TPU/cloud preemption and schedulers stop a job)
with a checkpoint of the step reached.

With one process a SIGTERM handler sets a flag that the loop reads after every
device call. With several, JAX's preemption notifier catches the signal and
its sync point (``multihost_utils.reached_preemption_sync_point``), asked after
every device call (the same sequence of calls on every process), becomes true
on every process at the same call, so all of them save the same step. The
handler is installed for the duration of a run only and the previous one
restored after.

Ctrl-C (SIGINT) does the same: the first asks for the stop (the run saves a
checkpoint and stops with status 130), a second interrupts at once. With one
process it sets the flag; with several it sends this process a SIGTERM, for
JAX's notifier, so that every process saves the same step, and at the sync
point the processes tell one another whether any of them was interrupted (so
all of them report the interrupt, whichever one received it: a Ctrl-C in one
process's terminal). Letting Python raise KeyboardInterrupt wherever the
main thread was lost it now and then (in ~1 of 8 interrupts just after a
checkpoint, the run trained on), left the steps since the last checkpoint
unsaved, and with several processes stopped only the process interrupted
(its peers' next collective failed). A SIGINT this process ignores (started
in the background by a shell) stays ignored.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from absl import logging


class PreemptionWatcher:
  """``with PreemptionWatcher() as watcher: ... if watcher.requested(step): ...``"""

  def __init__(self):
    self._flag = threading.Event()
    self.interrupted = False
    self._previous = None
    self._previous_sigint = None
    self._multi = jax.process_count() > 1
    self._calls = 0

  def _handler(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving a checkpoint and stopping", signum)
    self._flag.set()

  def _interrupt(self, signum, frame):
    del frame
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one: KeyboardInterrupt
    logging.warning("received signal %d (Ctrl-C): saving a checkpoint and stopping; Ctrl-C again "
                    "stops at once", signum)
    self.interrupted = True
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier: the sync point
    else:
      self._flag.set()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      if not self._multi:  # with several, JAX's notifier has SIGTERM
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        self._previous_sigint = signal.signal(signal.SIGINT, self._interrupt)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    if self._previous_sigint is not None:
      signal.signal(signal.SIGINT, self._previous_sigint)
      self._previous_sigint = None

  def requested(self, step: int) -> bool:
    """True (on every process, at the same call) once a stop was asked for.
    Call it after every device call, with the step reached."""
    del step
    if self._multi:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      self._calls += 1  # consecutive ids: the sync point is agreed in these units
      if not multihost_utils.reached_preemption_sync_point(self._calls):
        return False
      # Every process is here, at the same call: was any of them interrupted?
      self.interrupted = bool(multihost_utils.process_allgather(
          np.int32(self.interrupted)).any())
      return True
    return self._flag.is_set()
