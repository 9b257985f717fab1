"""Ending the processes of a multi-process run together when process 0 ends
alone.

Process 0 runs JAX's coordination service. When it ends at once on an error
that may be its own (a storage failure: only process 0 writes the run's
files; a Ctrl-C that reached it alone; a bug), its peers are blocked in a
collective it will never join, and when its process is gone JAX's C++
client aborts them (SIGABRT, status -6/134, "the JAX distributed service
detected fatal errors", and a dump of Python's extension modules): their
logs did not say why. Seen in 2 of 3 tries of a pair whose process 0 could
not write its first checkpoint (``tests/test_multiprocess.py``; in the
third, process 1's save watchdog found the lock file process 0 had just
released gone and said the workdir had been removed, which it had not),
and in 4 of 34 tries of a workdir removed under a pair.

So, before it ends, process 0 publishes its status and message in the
coordination service's key-value store (:func:`announce_end`). Every other
process watches for them from a thread started when the distributed runtime
starts (:func:`start_watching`): found, it says so (``error: process 0
stopped (status N): <message>``) and ends with the same status. Process 0
waits, up to :data:`ACK_SECONDS`, until each peer has said that it ends,
then :data:`EXIT_GRACE_SECONDS` more (the service must outlive them: JAX's
client aborts a process whose service is gone), then ends itself. A peer
ending on its own error at the same time marks that first
(:func:`mark_ending`): process 0's announcement then leaves it to end with
its own status and message, and it says that it ends right before it does
(:func:`exit_now`). Process 0
announces before it writes its own last lines, so that they stay last (after
any warning of the announcement); the others say that they end after theirs,
so that process 0 and its service outlive them, and without a word when
that fails (process 0's log names a peer it did not hear from).

With one process everything here is a no-op.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
import time

from absl import logging

# Process 0's {"status", "message"}, one key per other process: each waits
# on its own, which its own exit also sets ({"stop_watching": true}) to end
# the wait at once.
END_KEY = "rldjax/process_0_ends/{}"
ENDED_DIR = "rldjax/ends/"
ENDED_KEY = ENDED_DIR + "{}"  # set by each other process as it ends
WAIT_SECONDS = 60.0  # how long each of a peer's waits for its END_KEY lasts (one request each)
ACK_SECONDS = 1.0  # how long process 0 waits for its peers to end first
# How long process 0's service outlives a peer's word that it ends: the
# peer's request returns and it exits then, but if the service went before
# the answer came back, JAX's client aborts the peer (status -6, a stack
# dump after its last line). Seen once in CI; a peer 0.1 s slow to exit
# after its word is aborted every time without this wait
# (tests/test_peer_stop.py).
EXIT_GRACE_SECONDS = 0.5

_ending = threading.Event()  # this process is ending on its own error
_watching = threading.Event()  # set to stop the watcher (at exit)


def _runtime():
  """``(client, process index, process count)`` of JAX's started distributed
  runtime (its coordination client), or None with one process or before it
  starts. Nothing is imported: without JAX's distributed module loaded there
  is no runtime."""
  state = getattr(sys.modules.get("jax._src.distributed"), "global_state", None)
  client = getattr(state, "client", None)
  if client is None or (state.num_processes or 1) < 2:
    return None
  return client, state.process_id, state.num_processes


def start_watching() -> None:
  """On processes other than 0 of a started multi-process runtime: a daemon
  thread that ends this process as process 0 announced (:func:`announce_end`).
  Stopped at exit, before JAX shuts its client down (atexit handlers run
  last-registered first; JAX registers its own when it is imported)."""
  runtime = _runtime()
  if runtime is None or runtime[1] == 0:
    return
  client, index, _ = runtime
  watcher = threading.Thread(target=_watch, args=(client, index), daemon=True,
                             name="rldjax-process-0-watcher")
  watcher.start()

  def stop():
    _watching.set()
    # Ends the watcher's wait now (a normal exit waits for it in JAX's
    # shutdown); where the service cannot be reached, the join's timeout.
    _request("ending this process's wait for process 0", client.key_value_set,
             END_KEY.format(index), json.dumps({"stop_watching": True}), allow_overwrite=True)
    watcher.join(timeout=1.0)
  atexit.register(stop)


_FAILED = object()  # what _request returns for a request that failed


def _request(what: str, call, *args, **kwargs):
  """``call(*args, **kwargs)`` to the coordination service; when it fails,
  a warning saying ``what`` could not be done and why, and :data:`_FAILED`."""
  try:
    return call(*args, **kwargs)
  except Exception as err:  # pylint: disable=broad-except
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    logging.warning("%s failed: %s", what, first)
    return _FAILED


def _watch(client, index: int) -> None:
  while not _watching.is_set():
    start = time.monotonic()
    try:  # the service answers as soon as the key is set, or after WAIT_SECONDS
      announced = json.loads(client.blocking_key_value_get(END_KEY.format(index),
                                                           int(WAIT_SECONDS * 1000)))
    except Exception:  # pylint: disable=broad-except
      # Not announced (DEADLINE_EXCEEDED), or the client is shutting down
      # (this process's exit) or has lost the service (JAX's client ends the
      # process then): never again within a second.
      _watching.wait(max(0.0, 1.0 - (time.monotonic() - start)))
      continue
    if _watching.is_set() or "stop_watching" in announced:
      return
    if _ending.is_set():
      return  # ending on its own error, with its own message: exit_now tells process 0
    end_now(int(announced["status"]),
            f"process 0 stopped (status {announced['status']}): {announced['message']}")


def _set_ended(client, index: int) -> None:
  """Tells process 0 that this process ends: the last thing it does, after
  its last lines. A failure is not logged here, where it would follow them,
  and where it can be false: the key may have been set and process 0 gone
  before the answer came back (``UNAVAILABLE: Socket closed``, seen once in
  CI, before process 0 waited :data:`EXIT_GRACE_SECONDS` after the word).
  Process 0 is the one that knows: it waits :data:`ACK_SECONDS` at most for
  a peer it did not hear from, and its log names that peer
  (:func:`announce_end`)."""
  with contextlib.suppress(Exception):
    client.key_value_set(ENDED_KEY.format(index), "1", allow_overwrite=True)


def end_now(status: int, message: str, logged: str | None = None) -> None:
  """:func:`exit_now` with ``logged`` (default ``message``) in the log and
  ``error: <message>`` as the last line on stderr (from any thread)."""
  def say():
    logging.error("%s", message if logged is None else logged)
    logging.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
  exit_now(status, message, say)


def exit_now(status: int, message: str, say) -> None:
  """Ends this process at once (``os._exit``) with ``status``, ``say()``
  writing its last lines (an OSError there is ignored: the log or stderr may
  be on the storage that failed, and the status still says it). With several
  processes, process 0 first announces ``status`` and ``message`` and waits
  for the others (:func:`announce_end`); another process says that it ends
  after its lines, which is what process 0 waits for."""
  mark_ending()
  runtime = _runtime()
  if runtime is not None and runtime[1] == 0:
    announce_end(status, message)
  with contextlib.suppress(OSError):
    say()
  if runtime is not None and runtime[1] != 0:
    _set_ended(runtime[0], runtime[1])
  os._exit(status)  # pylint: disable=protected-access


def mark_ending() -> None:
  """This process ends on its own error: called when it starts saying so,
  before :func:`exit_now`. An announcement of process 0's from then on
  does not end it (it ends with its own status and message)."""
  _ending.set()


def announce_end(status: int, message: str, timeout: float = ACK_SECONDS,
                 grace: float = EXIT_GRACE_SECONDS) -> list[int]:
  """On process 0 of a multi-process run, before it ends at once with
  ``status``: publishes ``status`` and ``message`` for the other processes
  and waits until each has said it ends, at most ``timeout`` seconds, then
  ``grace`` seconds more when any has (for it to exit while the service
  runs). Returns the processes told that did not say so in time (empty when all
  did); a request that fails is a warning in the log, and a process it
  could not tell is not waited for.
  Elsewhere a no-op (returns ``[]``)."""
  runtime = _runtime()
  if runtime is None or runtime[1] != 0:
    return []
  client, _, count = runtime
  payload = json.dumps({"status": status, "message": message})
  # Only the processes told are waited for (one not told cannot answer).
  told = {index for index in range(1, count)
          if _request(f"telling process {index} that process 0 ends", client.key_value_set,
                      END_KEY.format(index), payload, allow_overwrite=True) is not _FAILED}
  waiting = set(told)
  # A peer that died without a word is waited for too: JAX's query of live
  # processes (get_live_nodes) waits until every process named has asked as
  # well, so it cannot tell (seen: 100 s, until the dead peer's heartbeats
  # timed out).
  deadline = time.monotonic() + timeout
  while waiting and time.monotonic() < deadline:
    ended = _request("reading which processes have ended", client.key_value_dir_get, ENDED_DIR)
    if ended is _FAILED:
      break  # the service fails: JAX's client ends the others, as before this module
    waiting -= {int(key.rsplit("/", 1)[-1]) for key, _ in ended}
    if waiting:
      time.sleep(0.02)
  if waiting:
    logging.warning("processes %s did not say within %.1f s that they end; process 0 ends "
                    "now (JAX's client aborts any of them still running)", sorted(waiting),
                    timeout)
  if told - waiting:
    time.sleep(grace)
  return sorted(waiting)
