"""The entry points' exit statuses: a RunError ends the process with its
exit_code and message, without a traceback; anything else propagates."""
import pytest

from experiments import exit_status
from rldjax import errors


@pytest.mark.parametrize("error, code", [
    (errors.DivergedError("diverged at step 7"), 3),
    (errors.WorkdirError("workdir w is in use"), 2),
    (errors.ConfigError("config.lr: bad"), 2),
    (errors.PreemptedError("stopped at step 9"), 143),
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
