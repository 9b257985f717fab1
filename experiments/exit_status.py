"""How the command-line entry points end when a run fails as documented.

A :class:`rldjax.errors.RunError` (a config, data, teacher or workdir the run
cannot use, a divergence, a storage failure, a preemption) ends the process with the error's
``exit_code`` and its message on stderr, without a traceback; anything else
keeps its traceback (a bug). ``experiments/train.py``,
``experiments/demo.py`` and the benchmarks that run the loop
(``benchmarks/schedule.py``, ``benchmarks/train_step.py``) end the same way,
so a script can tell a diverged demo (3) from a busy workdir (2) from a bad
flag (1).
"""
import sys

from absl import logging

from rldjax import errors


def exit_on_run_error(fn, *args, **kwargs):
  """``fn(*args, **kwargs)``; on a RunError, logs it, writes ``error: <message>``
  to stderr and exits with its ``exit_code``."""
  try:
    return fn(*args, **kwargs)
  except errors.RunError as err:
    logging.error("%s: %s", type(err).__name__, err)
    sys.stderr.write(f"error: {err}\n")
    sys.exit(err.exit_code)
