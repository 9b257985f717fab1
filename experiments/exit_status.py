"""How the command-line entry points end when a run fails as documented.

A :class:`rldjax.errors.RunError` (a config, data, teacher or workdir the run
cannot use, a divergence, a storage failure, a preemption) ends the process with the error's
``exit_code`` and its message on stderr, without a traceback; anything else
keeps its traceback (a bug). ``experiments/train.py``,
``experiments/demo.py`` and the benchmarks that run the loop
(``benchmarks/schedule.py``, ``benchmarks/train_step.py``) end the same way,
so a script can tell a diverged demo (3) from a busy workdir (2) from a bad
flag (1).

Before :func:`exit_on_run_error` runs (the imports, flag parsing and config
loading of a start-up, ~2 s), ``experiments/start_up.py`` makes Ctrl-C end
the process at once with status 130 and one line, where Python printed a
KeyboardInterrupt traceback from wherever start-up was (or, inside a C
extension's import, an ``ImportError``, status 1).
"""
import contextlib
import gc
import re
import signal
import sys
import threading
import traceback

from absl import logging

from experiments import start_up
from rldjax import errors, peer_stop


INTERRUPTED = start_up.INTERRUPTED


def exit_on_run_error(fn, *args, on_interrupt: str = "", **kwargs):
  """``fn(*args, **kwargs)``; on a RunError, logs it, writes ``error: <message>``
  to stderr as the process's last line and exits with its ``exit_code``
  (Ctrl-C while a run trains: ``InterruptedRunError``, 130, the step saved,
  on every process; rldjax/train/preemption.py). On a KeyboardInterrupt
  elsewhere (start-up, the demo's main thread, a second Ctrl-C; the run has recorded
  "interrupted" and closed its checkpoints), the same with ``interrupted
  (Ctrl-C or SIGINT)`` and ``on_interrupt`` (what the same command does
  next), status 130, where Python printed the traceback of wherever the main
  thread was.

  A storage failure in a multi-process run may be this process's alone (only
  process 0 writes the run's files), and so may a KeyboardInterrupt (a
  second Ctrl-C, or one during start-up): its peers wait in a
  collective it will never join, and a normal exit would wait for them in
  JAX's shutdown barrier (5 minutes, then every process aborted). It ends the
  process at once instead. Process 0, which runs JAX's coordination service,
  first tells its peers and waits for them to end (they end with its status
  and a line saying so: :mod:`rldjax.peer_stop`); another process's peers
  learn of its end from their next collective. Any other error escaping a
  multi-process run (a collective that failed because a peer died, or a
  bug) likewise ends the process at once after its traceback (process 0
  telling its peers first), with status 1: waiting in that
  barrier for a dead peer ended with JAX's abort (status 134) 52-90 s later.
  Its last line says what happened (:func:`multiprocess_failure`): where the
  error is a collective that lost its peers (a peer stopped: Ctrl-C there
  during start-up, a kill, a crash), that another process stopped and that
  the same commands resume the run (a peer stopped during start-up leaves
  this one waiting in such a collective for JAX's 30 s first).

  Once the status is decided, a further Ctrl-C is ignored while the
  process ends (:func:`ignore_interrupts_from_now`)."""
  if start_up.is_start_up_handler(signal.getsignal(signal.SIGINT)):
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    return fn(*args, **kwargs)
  except errors.RunError as err:
    name, message, code = type(err).__name__, str(err), err.exit_code
    ends_process_now = isinstance(err, errors.StorageError) and _process_count() > 1
  except KeyboardInterrupt:
    name, message, code = "KeyboardInterrupt", "interrupted (Ctrl-C or SIGINT)", INTERRUPTED
    message += f"; {on_interrupt}" if on_interrupt else ""
    ends_process_now = _process_count() > 1  # a SIGINT may have reached this process alone
  except Exception:  # pylint: disable=broad-except
    if _process_count() == 1:
      raise  # a bug: its traceback, status 1
    ignore_interrupts_from_now()
    peer_stop.mark_ending()
    traceback.print_exc()
    failure = multiprocess_failure(sys.exc_info()[1])

    def say_failure():
      sys.stderr.write(f"error: {failure}\n")
      _flush_quietly()
    peer_stop.exit_now(1, failure, say_failure)
  ignore_interrupts_from_now()
  if ends_process_now:
    peer_stop.mark_ending()
  # Out of the except block the error and its traceback are released, so what
  # only they held can be collected, and is, before the error line. A failed
  # save leaves its other writes' asyncio tasks, whose exception nobody
  # retrieved; asyncio logs each, with a traceback, when the task is
  # collected, which during exit came after the error line.
  gc.collect()

  def say():
    # The log may be on the storage that failed: the status still says it.
    with contextlib.suppress(OSError):
      logging.error("%s: %s", name, message)
      sys.stderr.write(f"error: {message}\n")
    _flush_quietly()
  if ends_process_now:
    peer_stop.exit_now(code, message, say)
  say()
  sys.exit(code)


def ignore_interrupts_from_now() -> None:
  """Makes SIGINT ignored for the rest of the process (from the main thread;
  elsewhere a no-op): for when its outcome is decided and it only ends.

  A Ctrl-C held down reaches a stopped run while it exits (JAX's shutdown,
  then the interpreter's teardown: up to ~1 s). Python raised it as a
  KeyboardInterrupt into the exit's cleanup (a traceback after the last
  line) or, during the teardown, where Python has restored SIGINT's default
  action, it killed the process (status -2 instead of its own); process 0
  killed so took JAX's coordination service with it, and JAX's client
  aborted its peers (status -6). An ignored SIGINT stays ignored through the
  teardown. Nothing is lost: what the exit waits for is bounded (process
  0's wait for its peers' word and their exit, at most 1.5 s:
  rldjax/peer_stop.py; JAX's shutdown barrier, which the other processes of
  a stop they agreed on reach at once, and which waits in C++, where a
  KeyboardInterrupt only came after it anyway)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# What JAX's collectives and coordination client say when a peer process is
# gone: its connection closed (gloo), or a key it was to publish never came
# (the coordination service's key-value store, waited on during start-up).
_PEER_LOST = re.compile(r"Connection (closed|reset) by peer|GetKeyValue\(\) timed out")


def multiprocess_failure(err: BaseException) -> str:
  """The last line of a multi-process run's process ended by ``err``, an
  error that is not a RunError (its traceback comes first)."""
  first = (str(err).strip().splitlines() or [""])[0][:400]
  what = f"{type(err).__name__}: {first}".rstrip(": ")
  jax = sys.modules.get("jax")
  who = f"process {jax.process_index()}" if jax is not None else "this process"
  if _PEER_LOST.search(str(err)):
    return (f"{who} stopped: a collective with the other processes failed ({what}). Another "
            "process has stopped or cannot be reached: see its log. The complete checkpoints "
            "are kept; rerun the same commands on every host to resume.")
  return (f"{who} failed ({what}; traceback above). The complete checkpoints are kept; rerun "
          "the same commands on every host to resume.")


def _flush_quietly() -> None:
  with contextlib.suppress(OSError):
    logging.flush()
    sys.stderr.flush()
    sys.stdout.flush()


def _process_count() -> int:
  jax = sys.modules.get("jax")  # not imported: one process
  return jax.process_count() if jax is not None else 1
