"""Launching a command as from a terminal's foreground, where Ctrl-C works.

A process started in the background by a non-interactive shell (``make test
&``, a CI runner's script) ignores SIGINT, and its children inherit that:
Python then installs no KeyboardInterrupt handler, and a test's SIGINT does
nothing (the launcher rightly leaves an ignored SIGINT ignored)."""
import sys

_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


def with_default_sigint(cmd: list) -> list:
  """``cmd`` run with SIGINT's default disposition, whatever this process's."""
  return [sys.executable, "-c", _DEFAULT_SIGINT, *map(str, cmd)]
