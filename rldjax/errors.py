"""Errors a run reports to its user instead of a traceback.

Each carries the exit status the launcher (``experiments/train.py``) ends
with, so that a scheduler or a script can tell what happened without parsing
logs. Anything else that escapes a run is a bug and keeps its traceback.
"""
from __future__ import annotations


class RunError(Exception):
  """A run cannot start or go on; the message says why and what to do."""
  exit_code = 2


class ConfigError(RunError, ValueError):
  """A config field is invalid; the message starts with ``config.<field>:``."""


class DatasetNotFoundError(RunError, FileNotFoundError):
  """The dataset is not prepared where the run looks for it."""


class TeacherError(RunError, ValueError):
  """The teacher export is missing, of another model, or not finite."""


class WorkdirError(RunError):
  """The workdir is in use by another process, or holds another experiment."""


class LockLostError(WorkdirError):
  """Another launch took the workdir's lock over (this process sent no
  heartbeat for long: suspended, or its host cut off): the run stops
  without writing anything more there."""


class DataError(RunError, ValueError):
  """The data contradicts the config (e.g. a label outside [0, num_classes))."""


class DivergedError(RunError):
  """The loss or a gradient became non-finite; the run stopped at that step."""
  exit_code = 3


class StorageError(RunError):
  """A file of the run could not be written or read (disk full, no
  permission, a storage service down): the run stopped, its complete
  checkpoints are kept, and the same command resumes once storage is fixed."""
  exit_code = 4


class PreemptedError(RunError):
  """The run was asked to stop (SIGTERM) and saved a checkpoint to resume from."""
  exit_code = 143  # 128 + SIGTERM, what a scheduler expects of a terminated job


class InterruptedRunError(RunError):
  """The run was interrupted (Ctrl-C or SIGINT) and saved a checkpoint to
  resume from."""
  exit_code = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
