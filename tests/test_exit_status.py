"""The entry points' exit statuses: a RunError ends the process with its
exit_code and message, without a traceback; anything else propagates."""
import errno

import pytest

from experiments import exit_status
from rldjax import errors
from rldjax.train import workdir


@pytest.mark.parametrize("error, code", [
    (errors.DivergedError("diverged at step 7"), 3),
    (errors.WorkdirError("workdir w is in use"), 2),
    (errors.ConfigError("config.lr: bad"), 2),
    (errors.PreemptedError("stopped at step 9"), 143),
    (errors.StorageError("storage failed in w: No space left on device"), 4),
])
def test_run_errors_exit_with_their_status(error, code, capsys):
  def fail():
    raise error
  with pytest.raises(SystemExit) as exited:
    exit_status.exit_on_run_error(fail)
  assert exited.value.code == code
  assert capsys.readouterr().err == f"error: {error}\n"


def test_other_errors_keep_their_traceback_and_results_pass_through():
  def bug():
    raise KeyError("a bug")
  with pytest.raises(KeyError, match="a bug"):
    exit_status.exit_on_run_error(bug)
  assert exit_status.exit_on_run_error(lambda a, b=0: a + b, 2, b=3) == 5


def _raised_from(cause, error):
  try:
    raise error from cause
  except Exception as err:  # pylint: disable=broad-except
    return err


def _raised_during(context, error):
  try:
    try:
      raise context
    except Exception:  # pylint: disable=broad-except
      raise error  # pylint: disable=raise-missing-from
  except Exception as err:  # pylint: disable=broad-except
    return err


TENSORSTORE_EFBIG = ('OUT_OF_RANGE: Error writing "float32/0" in OCDBT database: Failed to write '
                     "235424 bytes to file 14: File too large [os_error_code='27']")


@pytest.mark.parametrize("error, failure", [
    (OSError(errno.ENOSPC, "No space left on device"), "[Errno 28] No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied"), "[Errno 13] Permission denied"),
    # Orbax's array writes raise TensorStore's errors as ValueError.
    (ValueError(TENSORSTORE_EFBIG + "\nmore"), TENSORSTORE_EFBIG),
    (ValueError("RESOURCE_EXHAUSTED: Error writing x"), "RESOURCE_EXHAUSTED: Error writing x"),
    (_raised_from(OSError(errno.EROFS, "Read-only file system"), RuntimeError("save failed")),
     "[Errno 30] Read-only file system"),
    # Not the storage: bugs keep their traceback, and run errors their own status.
    (ValueError("OUT_OF_RANGE: index 7 is outside [0, 5)"), None),
    (ValueError("could not broadcast shapes"), None),
    (_raised_during(OSError(errno.ENOSPC, "full"), KeyError("a bug while handling it")), None),
    (errors.DatasetNotFoundError("rldjax_digits is not prepared"), None),
])
def test_storage_failures_are_told_from_bugs(error, failure):
  assert workdir.storage_failure(error) == failure
