"""Ending a multi-process run whose workdir is removed while it saves a
checkpoint, instead of letting its processes wait for one another.

With several processes a checkpoint save is a sequence of barriers and
waits between them: process 0 creates the checkpoint's directories and the
others wait for them to appear. Removed (``rm -rf`` of the workdir, or a
cleanup script) while a save ran, process 1 waited for a directory process
0 had already made, in Orbax's array-metadata store, while process 0 waited
for process 1 in the save's final barrier (seen in 1 of 8 removals at a
random moment and 1 of 4 removals during a save, a pair saving every 5
steps; each hang was watched for 2.5-6 minutes and killed: Orbax gives that
wait 600 s, then raises a ``ValueError``). A single process fails at once
there (its writes raise ``FileNotFoundError``: a storage failure, status 4).

While a save runs, a thread of every process checks every ``interval``
seconds that the run's lock file is still there (the workdir is one
directory every process sees: checked before training). Missing twice in a
row (a takeover by another launch renames the old file aside for an
instant), the process says why, as the launcher ends a storage failure (a
line ``error: storage failed in <workdir>: ...``, status 4), and ends at
once: its peers are blocked in the save, where no exception reaches them.
Process 0, which runs JAX's coordination service, waits ``2 * interval``
more first, so that the others end with their own status and message
rather than JAX's abort when the service goes, and then waits for those
that have not ended (:func:`rldjax.peer_stop.exit_now`).
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator

import jax

from rldjax import errors, peer_stop


@contextlib.contextmanager
def lock_watched(lock_path: str, stopped: Callable[[], str],
                 interval: float = 0.5) -> Iterator[None]:
  """Within it, with several processes, a ``lock_path`` found missing twice
  in a row ends this process: ``stopped()`` (best-effort records) gives the
  message, written as the launcher writes a storage failure, then status 4.
  With one process it does nothing."""
  if jax.process_count() == 1:
    yield
    return
  done = threading.Event()

  def watch():
    missing = 0
    while not done.wait(interval):
      try:
        os.stat(lock_path)
        missing = 0
      except FileNotFoundError:
        missing += 1
      except OSError:
        continue  # a file system's hiccup (ESTALE, EIO): the next check tells
      if missing < 2 or done.is_set():
        continue
      if jax.process_index() == 0 and done.wait(2 * interval):
        return  # the save ended after all: the loop's own check stops the run
      try:
        message = stopped()
      except Exception as err:  # pylint: disable=broad-except
        message = (f"storage failed: {lock_path} disappeared while the run saved a checkpoint "
                   f"(and describing it failed: {type(err).__name__}: {err})")
      _end_process(message)  # whatever the description did: never left waiting

  watcher = threading.Thread(target=watch, name=f"save watchdog {lock_path}", daemon=True)
  watcher.start()
  try:
    yield
  finally:
    done.set()
    watcher.join()


def _end_process(message: str) -> None:
  peer_stop.end_now(errors.StorageError.exit_code, message, logged=f"StorageError: {message}")
