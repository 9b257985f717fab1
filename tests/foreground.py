"""Launching a command as from a terminal's foreground, where Ctrl-C works,
and never leaving it behind.

A process started in the background by a non-interactive shell (``make test
&``, a CI runner's script) ignores SIGINT, and its children inherit that:
Python then installs no KeyboardInterrupt handler, and a test's SIGINT does
nothing (the launcher rightly leaves an ignored SIGINT ignored).

A test that fails while its launches train (long runs, stopped by the test's
signal) would leave them training for the rest of the session, slowing every
later test, and pytest later removes their workdir under them (a pair of
processes then hung in Orbax's save for 10 minutes): ``launch`` records each
process, and ``kill_leftovers`` (an autouse fixture in conftest.py) kills
those still running when the test ends."""
import subprocess
import sys

_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")
_launched: list = []


def with_default_sigint(cmd: list) -> list:
  """``cmd`` run with SIGINT's default disposition, whatever this process's."""
  return [sys.executable, "-c", _DEFAULT_SIGINT, *map(str, cmd)]


def launch(cmd: list, **popen_kwargs) -> subprocess.Popen:
  """``subprocess.Popen`` of ``cmd`` with SIGINT's default disposition,
  killed at the end of the test if it still runs."""
  proc = subprocess.Popen(with_default_sigint(cmd), **popen_kwargs)
  _launched.append(proc)
  return proc


def kill_leftovers() -> list:
  """Kills (SIGKILL) the processes ``launch`` started that still run;
  returns their pids."""
  left = [p for p in _launched if p.poll() is None]
  for p in left:
    p.kill()
    p.wait()
  _launched.clear()
  return [p.pid for p in left]
