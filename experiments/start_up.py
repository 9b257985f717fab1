"""What an entry point does first, before its slower imports: :func:`begin`.

This module imports only the standard library (and, in :func:`begin`,
``rldjax.runtime``, which does too), so that it runs about 20 ms after the
interpreter starts (here).

A Ctrl-C before :func:`begin` has run gets Python's KeyboardInterrupt
traceback from wherever start-up is (status -2, or inside a C extension's
import an ``ImportError``, status 1). From :func:`begin` on, until
:func:`experiments.exit_status.exit_on_run_error` starts the run, it ends the
process at once with status 130 and one line: nothing of a run exists yet,
so there is nothing to save or record.
"""
import contextlib
import os
import signal
import sys

# The shell's status for a process ended by SIGINT (128 + 2), as Python's own.
INTERRUPTED = 130


def _interrupted_during_start_up(signum, frame):
  del signum, frame
  with contextlib.suppress(OSError):  # stderr closed: the status still says it
    sys.stderr.write("\nerror: interrupted (Ctrl-C or SIGINT) during start-up, before any run "
                     "began\n")
    sys.stderr.flush()
  os._exit(INTERRUPTED)  # pylint: disable=protected-access


def stop_on_interrupt_during_start_up() -> None:
  """Makes SIGINT end the process at once (status 130, one line on stderr)
  until :func:`experiments.exit_status.exit_on_run_error` starts, which
  restores the KeyboardInterrupt. A SIGINT the process was started ignoring
  stays ignored."""
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_during_start_up)


def is_start_up_handler(handler) -> bool:
  """Whether ``handler`` (``signal.getsignal(signal.SIGINT)``) is the one
  :func:`stop_on_interrupt_during_start_up` installs."""
  return handler is _interrupted_during_start_up


def begin() -> None:
  """First thing in an entry point's ``__main__``: the start-up handler
  above, then the restart with glibc's huge-page tunable
  (:func:`rldjax.runtime.reexec_with_huge_pages`, where the kernel asks for
  it) with SIGINT held across it: a Ctrl-C during the new process's own
  start-up waits until that process has installed the handler again, where
  it got Python's traceback. Before, the restart came after the entry
  point's imports (absl, ml_collections, the configs: ~50 ms here), so a
  launch spent about 0.1 s without the handler (a Ctrl-C at 0-50 ms and at
  75-115 ms after the launch got a traceback, status -2 or 1); now only
  the first ~20 ms, while Python itself starts, before this module runs."""
  stop_on_interrupt_during_start_up()
  from rldjax import runtime  # pylint: disable=import-outside-toplevel
  runtime.release_held_sigint()
  runtime.reexec_with_huge_pages(hold_sigint=True)
