"""The entry points' exit statuses: a RunError ends the process with its
exit_code and message, without a traceback; anything else propagates."""
import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from experiments import exit_status, start_up
from rldjax import errors
from rldjax.train import workdir
from tests import foreground

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def sigint_restored():
  """exit_on_run_error ignores SIGINT once the process's status is decided
  (it only ends then); these tests call it in pytest's process."""
  previous = signal.getsignal(signal.SIGINT)
  yield
  signal.signal(signal.SIGINT, previous)


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
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a late Ctrl-C changes nothing


def test_an_interrupt_ends_with_one_line_and_status_130(capsys):
  def interrupted(**kwargs):
    assert kwargs == {"a": 1}
    raise KeyboardInterrupt
  with pytest.raises(SystemExit) as exited:
    exit_status.exit_on_run_error(interrupted, a=1, on_interrupt="rerun it")
  assert exited.value.code == 130
  assert capsys.readouterr().err == "error: interrupted (Ctrl-C or SIGINT); rerun it\n"
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_other_errors_keep_their_traceback_and_results_pass_through():
  signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal's foreground
  def bug():
    raise KeyError("a bug")
  with pytest.raises(KeyError, match="a bug"):
    exit_status.exit_on_run_error(bug)
  assert exit_status.exit_on_run_error(lambda a, b=0: a + b, 2, b=3) == 5
  # Neither ends the process here: a Ctrl-C still interrupts what the caller does next.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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


# A process whose save failed: one write's error was raised, another write's
# asyncio task failed too and nobody retrieved its exception. The task is held
# by a reference cycle (as Orbax's closed event loop holds it), and automatic
# collection is off, so nothing collects it before the run's error line
# unless the exit path does.
_FAILED_SAVE_THEN_EXIT = r"""
import asyncio, gc, sys
from absl import logging
from experiments import exit_status
from rldjax import errors

gc.disable()
logging.use_absl_handler()

async def other_write():
  raise ValueError("OUT_OF_RANGE: Error writing 'uint32/0': File too large")

def failed_save():
  loop = asyncio.new_event_loop()
  held = []
  async def save():
    held.append(loop.create_task(other_write()))
    await asyncio.sleep(0.01)  # the task fails; its exception is never retrieved
  loop.run_until_complete(save())
  loop.close()
  held.append(held)  # a cycle: only the cyclic collector frees the task
  raise errors.StorageError("storage failed in w: File too large")

exit_status.exit_on_run_error(failed_save)
"""


def test_the_error_line_is_the_last_line_after_a_failed_save():
  """asyncio logs a task's unretrieved exception when the task is collected.
  CI saw one such log (another write of the failed save) come after ``error:
  storage failed``, when the collector ran during exit; the exit path
  collects first, so the error line is the last line."""
  done = subprocess.run([sys.executable, "-c", _FAILED_SAVE_THEN_EXIT], capture_output=True,
                        text=True, timeout=120, cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert done.returncode == 4, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert "Task exception was never retrieved" in done.stderr, done.stderr[-3000:]
  assert lines[-1] == "error: storage failed in w: File too large", done.stderr[-3000:]


_MULTIPROCESS_FAILURE = """
import sys, types
from experiments import exit_status
sys.modules["jax"] = types.SimpleNamespace(process_count=lambda: 2, process_index=lambda: 1)
def fail():
  raise {error}
exit_status.exit_on_run_error(fail)
"""


@pytest.mark.parametrize("error, last_line", [
    ('RuntimeError("UNKNOWN: Gloo context initialization failed: DEADLINE_EXCEEDED: '
     'GetKeyValue() timed out with key: cpu:gloo/0,2048/1\\nmore")',
     "error: process 1 stopped: a collective with the other processes failed (RuntimeError: "
     "UNKNOWN: Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed out "
     "with key: cpu:gloo/0,2048/1). Another process has stopped or cannot be reached: see its "
     "log. The complete checkpoints are kept; rerun the same commands on every host to resume."),
    ('RuntimeError("INTERNAL: [../third_party/gloo/pair.cc:589] Connection closed by peer '
     '[127.0.0.1]:6128")',
     "error: process 1 stopped: a collective with the other processes failed (RuntimeError: "
     "INTERNAL: [../third_party/gloo/pair.cc:589] Connection closed by peer [127.0.0.1]:6128). "
     "Another process has stopped or cannot be reached: see its log. The complete checkpoints "
     "are kept; rerun the same commands on every host to resume."),
    ('KeyError("a bug")',
     "error: process 1 failed (KeyError: 'a bug'; traceback above). The complete checkpoints "
     "are kept; rerun the same commands on every host to resume."),
])
def test_a_multiprocess_failure_ends_with_its_traceback_and_a_line_saying_what_happened(
    error, last_line):
  """With several processes an error that is not a RunError ends the process
  at once (status 1) after its traceback; the last line says whether a peer
  was lost (a process that stopped during start-up left its peer with only
  a traceback, 30 s later) or this process failed."""
  done = subprocess.run([sys.executable, "-c", _MULTIPROCESS_FAILURE.format(error=error)],
                        capture_output=True, text=True, timeout=120, cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert done.returncode == 1, done.stderr[-3000:]
  assert "Traceback (most recent call last)" in done.stderr
  assert done.stderr.strip().splitlines()[-1] == last_line, done.stderr[-3000:]


_SLOW_CONFIG = """
import pathlib, time
def get_config():
  pathlib.Path(__file__).with_suffix(".loading").touch()
  time.sleep(120)
"""


def test_ctrl_c_during_start_up_ends_the_launcher_with_one_line_and_status_130(tmp_path):
  """Ctrl-C while the launcher is still starting (here: loading its config,
  which blocks) ends it at once with status 130 and one line, and nothing in
  the workdir; it printed Python's KeyboardInterrupt traceback (inside a C
  extension's import: an ImportError, status 1)."""
  config = tmp_path / "slow.py"
  config.write_text(_SLOW_CONFIG)
  proc = foreground.launch(
      [sys.executable, "-m", "experiments.train", f"--config={config}",
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  deadline = time.time() + 120
  while not config.with_suffix(".loading").exists() and time.time() < deadline:
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines()[-1] == (
      "error: interrupted (Ctrl-C or SIGINT) during start-up, before any run began"), err[-3000:]
  assert not (tmp_path / "run").exists()


def test_the_start_up_interrupt_handler_gives_way_to_the_run_and_respects_an_ignored_sigint():
  previous = signal.getsignal(signal.SIGINT)
  try:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    start_up.stop_on_interrupt_during_start_up()
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    # From the run on, Ctrl-C is a KeyboardInterrupt again (the run saves and records it).
    assert exit_status.exit_on_run_error(
        lambda: signal.getsignal(signal.SIGINT)) is signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # started in the background: stays ignored
    start_up.stop_on_interrupt_during_start_up()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, previous)


_RESTART = """
import os, signal, sys
from rldjax import runtime
restarted = os.environ.get("STAGE") == "2"
# The restart with huge pages, whatever this machine's THP mode: once.
runtime.huge_pages_environment = lambda: None if restarted else dict(os.environ, STAGE="2")
from experiments import start_up
if restarted:
  print("HELD", signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []), flush=True)
  if sys.argv[1] == "interrupt":
    os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C during the new process's start-up
start_up.begin()
print("BEGUN", os.environ.get(runtime.SIGINT_HELD),
      signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []), flush=True)
"""


@pytest.mark.parametrize("interrupt", [True, False])
def test_a_ctrl_c_during_the_restart_with_huge_pages_reaches_the_start_up_handler(interrupt):
  """The launcher restarts itself (glibc's huge-page tunable) first thing;
  SIGINT is held across the restart until the new process has its start-up
  handler, so a Ctrl-C meanwhile ends it with the start-up line and status
  130 (it got Python's KeyboardInterrupt traceback, status -2). Without one,
  the new process goes on with SIGINT unblocked and no mark left for its
  children."""
  done = subprocess.run(
      foreground.with_default_sigint([sys.executable, "-c", _RESTART,
                                      "interrupt" if interrupt else "no"]),
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert done.stdout.splitlines()[0] == "HELD True", (done.stdout, done.stderr[-3000:])
  if interrupt:
    assert done.returncode == 130, done.stderr[-3000:]
    assert "BEGUN" not in done.stdout and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: interrupted (Ctrl-C or SIGINT) during start-up, before any run began")
  else:
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[1] == "BEGUN None False", done.stdout
