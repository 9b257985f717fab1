"""Runs left alone, as real processes launched with the README's command:
SIGKILL and SIGTERM at random points (each relaunched) end bit-identical to
an uninterrupted run; a second process on a busy workdir fails at once; a
lock left by a killed process is taken over; exit statuses say what happened;
the log is the run's own."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rldjax import export, runtime
from rldjax.data import builders
from tests import foreground

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"--config={ROOT}/experiments/configs/digits.py:method=vanilla,epochs=20"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  base = tmp_path_factory.mktemp("unattended")
  data_dir = base / "tfds"
  builders.load_builder("rldjax_digits", str(data_dir))
  environment = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
                     RLDJAX_CACHE_DIR=str(base / "jax_cache"))
  return {"base": base, "data_dir": str(data_dir), "env": environment}


def command(env, workdir, *extra):
  return [sys.executable, "-m", "experiments.train", CONFIG, f"--workdir={workdir}",
          f"--config.dataset.data_dir={env['data_dir']}", "--config.checkpoint.every_steps=7",
          *extra]


def run(env, workdir, *extra, timeout=300):
  return subprocess.run(command(env, workdir, *extra), env=env["env"], capture_output=True,
                        text=True, timeout=timeout)


def start(env, workdir, *extra):
  return foreground.launch(command(env, workdir, *extra), env=env["env"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def checkpoint_steps(workdir) -> set:
  """The finalised checkpoint steps in ``workdir`` (Orbax's temporary
  directories, named ``<step>.orbax-checkpoint-tmp-*``, are not)."""
  directory = workdir / "checkpoints"
  return {int(p.name) for p in directory.iterdir() if p.name.isdigit()} \
      if directory.exists() else set()


def wait_for_new_checkpoint(workdir, proc, before: set, timeout: float = 120.0):
  """Waits until ``proc`` has saved a checkpoint step not in ``before``: it is
  past start-up and restore, in its training loop (signal handler installed)."""
  deadline = time.time() + timeout
  while not checkpoint_steps(workdir) - before:
    if proc.poll() is not None:
      pytest.fail(f"the run exited ({proc.returncode}) before saving a checkpoint: "
                  f"{proc.stderr.read()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      pytest.fail(f"no new checkpoint in {workdir} after {timeout:.0f} s")
    time.sleep(0.05)


def assert_same_run(a, b):
  for name in ("last", "best"):
    _, _, va = export.load_model(str(a / "export" / name))
    _, _, vb = export.load_model(str(b / "export" / name))
    import jax
    for x, y in zip(jax.tree_util.tree_leaves(va), jax.tree_util.tree_leaves(vb)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ha = json.loads((a / "history.json").read_text())
  hb = json.loads((b / "history.json").read_text())
  assert ha == hb


def test_killed_and_terminated_runs_end_bit_identical(env):
  # 4 SIGKILLs, then a SIGTERM and a SIGINT (Ctrl-C), each followed by a
  # relaunch. Two kills land
  # at a random time after launch (start-up and restore included); the other
  # kills and the SIGTERM and SIGINT at most 0.5 s after the launch saved its first
  # checkpoint, so in its training loop however slow the machine is, and
  # with a bounded advance per launch: at most a checkpoint interval (7 steps)
  # plus 0.5 s of steps, ~30 at this machine's ~19 ms per step. 30 epochs are
  # 660 steps (22 per epoch), room for 6 launches on a machine 3x faster.
  epochs = "--config.num_epochs=30"
  reference = env["base"] / "reference"
  done = run(env, reference, epochs)
  assert done.returncode == 0, done.stderr[-3000:]
  # The run's own progress lines, not the checkpoint library's INFO lines.
  assert "loop.py" in done.stderr and "orbax" not in done.stderr.lower()
  # The launcher restarted itself with glibc's huge-page tunable where the
  # kernel's THP mode asks for it (rldjax.runtime.reexec_with_huge_pages).
  wanted = runtime.huge_pages_environment(env["env"])
  tunables = re.search(r"GLIBC_TUNABLES: (\S+)", done.stderr).group(1)
  assert tunables == (wanted["GLIBC_TUNABLES"] if wanted else
                      env["env"].get("GLIBC_TUNABLES", "none")), tunables
  # A fresh process compiles its programs; that time is reported apart from
  # the time in steps (JAX's compile events), and both fit in the wall time.
  times = json.loads((reference / "results.json").read_text())
  assert times["compile_time_s"] > 0.05, times["compile_time_s"]
  assert 0 < times["train_time_s"] <= times["wall_time_s"] - times["compile_time_s"]

  chaos = env["base"] / "chaos"
  rng = np.random.default_rng(2026)
  outcomes = []
  for i in range(6):
    sig = signal.SIGKILL if i < 4 else (signal.SIGTERM, signal.SIGINT)[i - 4]
    proc = start(env, chaos, epochs)
    if sig == signal.SIGKILL and i % 2 == 0:
      time.sleep(rng.uniform(0.3, 2.5))  # anywhere, start-up and restore included
    else:  # once this launch has taken steps (its own first checkpoint), however slow the machine
      wait_for_new_checkpoint(chaos, proc, checkpoint_steps(chaos))
      time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(sig)
    try:
      _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      proc.kill()
      pytest.fail(f"launch {i} did not stop after {sig.name}")
    outcomes.append(proc.returncode)
    if sig == signal.SIGTERM:
      assert proc.returncode == 143, (proc.returncode, err[-3000:])
      assert "stopped at step" in err and "Rerun the same command" in err
      status = json.loads((chaos / "results.json").read_text())["status"]
      assert status == "preempted"
    if sig == signal.SIGINT:  # saved like SIGTERM; one line, not a traceback
      assert proc.returncode == 130, (proc.returncode, err[-3000:])
      assert re.fullmatch(r"error: interrupted \(Ctrl-C or SIGINT\) at step (\d+); checkpoint "
                          r"saved in .*/checkpoints\. Rerun the same command to resume\.",
                          err.strip().splitlines()[-1]), err[-3000:]
      assert "Traceback" not in err, err[-3000:]
      interrupted = json.loads((chaos / "results.json").read_text())
      assert interrupted["status"] == "interrupted"
      assert interrupted["interrupted_at_step"] == max(checkpoint_steps(chaos))
  assert outcomes[:4] == [-signal.SIGKILL] * 4, outcomes  # no launch had ended before its kill
  final = run(env, chaos, epochs)
  assert final.returncode == 0, final.stderr[-3000:]
  assert json.loads((chaos / "results.json").read_text())["finished"]
  assert_same_run(reference, chaos)


def test_a_file_the_run_cannot_write_stops_it_with_status_4(env):
  """Files capped at 8 kB (RLIMIT_FSIZE: writes fail with EFBIG, as they fail
  with ENOSPC on a full disk): the epoch-1 checkpoint cannot be written. The
  run stops with status 4 and one error line, results.json says so, and the
  same command without the cap finishes."""
  workdir = env["base"] / "capped"
  cmd = command(env, workdir, "--config.num_epochs=2", "--config.checkpoint.every_steps=1000",
                "--compilation_cache=none")  # no cache entry is left cut short
  capped = subprocess.run(
      [sys.executable, "-c", "import os, resource, sys; "
       "resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000)); "
       "os.execv(sys.argv[1], sys.argv[1:])", *cmd],
      env=env["env"], capture_output=True, text=True, timeout=300)
  assert capped.returncode == 4, capped.stderr[-3000:]
  last = capped.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: storage failed in {workdir}: ") and "File too large" in last
  assert last.endswith("rerun the same command: it starts the run again.")  # none complete
  results = json.loads((workdir / "results.json").read_text())
  assert results["status"] == "storage_failed" and results["epochs_completed"] == 1
  assert not list(workdir.glob("*.tmp")) and not (workdir / "run.lock").exists()
  rerun = run(env, workdir, "--config.num_epochs=2", "--config.checkpoint.every_steps=1000")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert json.loads((workdir / "results.json").read_text())["status"] == "finished"
  assert not [p for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()]


def test_second_process_on_a_busy_workdir_fails_at_once(env):
  workdir = env["base"] / "busy"
  first = start(env, workdir, "--config.num_epochs=200")
  lock = workdir / "run.lock"
  deadline = time.time() + 60
  while not lock.exists() and time.time() < deadline:
    time.sleep(0.1)
  assert lock.exists(), first.stderr.read() if first.poll() is not None else "no lock"
  t0 = time.time()
  second = run(env, workdir, "--config.num_epochs=200")
  assert second.returncode == 2
  assert time.time() - t0 < 30
  holder = json.loads(lock.read_text())
  assert f"in use by process {holder['pid']}" in second.stderr and str(workdir) in second.stderr
  first.kill()
  first.wait()
  killed = lock.read_text()
  # A lock of another host (a job rescheduled elsewhere after its machine
  # died) cannot be checked by pid: it is held while its heartbeat is fresh.
  lock.write_text(json.dumps({"host": "another-host", "pid": 4242, "started": "earlier",
                              "token": "theirs", "heartbeat_seconds": 15}))
  elsewhere = run(env, workdir, "--config.num_epochs=2")
  assert elsewhere.returncode == 2
  assert re.search(r"in use by process 4242 on host another-host \(since earlier; last "
                   r"heartbeat \d s ago; it is taken over once no heartbeat came for 180 s",
                   elsewhere.stderr), elsewhere.stderr[-3000:]
  # The killed process left its lock behind: the next run takes it over.
  lock.write_text(killed)
  resumed = run(env, workdir, "--config.num_epochs=2")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "taking over the stale lock" in resumed.stderr
  assert not lock.exists()
  # Another host's lock that looks 200 s old (its heartbeat every 1 s), but
  # is still touched: that host's clock (or the file server's) is behind.
  lock.write_text(json.dumps({"host": "another-host", "pid": 4242, "started": "earlier",
                              "token": "theirs", "heartbeat_seconds": 1}))
  stop = threading.Event()

  def heartbeat_of_a_clock_200_s_behind():
    while True:
      os.utime(lock, (time.time() - 200, time.time() - 200))
      if stop.wait(0.5):
        return

  beating = threading.Thread(target=heartbeat_of_a_clock_200_s_behind)
  beating.start()
  try:
    skewed = run(env, workdir, "--config.num_epochs=2")
  finally:
    stop.set()
    beating.join()
  assert skewed.returncode == 2, skewed.stderr[-3000:]
  assert "watching it for 2 s before taking it over" in skewed.stderr
  assert re.search(r"in use by process 4242 on host another-host: its heartbeat goes on, though "
                   r"by this host's clock it is 2\d\d s old", skewed.stderr), skewed.stderr[-3000:]
  # Its heartbeat stopped 200 s ago: taken over after watching it for 2 s.
  os.utime(lock, (time.time() - 200, time.time() - 200))
  again = run(env, workdir, "--config.num_epochs=2")
  assert again.returncode == 0, again.stderr[-3000:]
  assert re.search(r"taking over the stale lock .* \(process 4242 on another-host sent no "
                   r"heartbeat for 2\d\d s", again.stderr), again.stderr[-3000:]
  assert "watching it for 2 s before taking it over" in again.stderr
  assert not lock.exists()


def test_exit_statuses(env):
  diverged = run(env, env["base"] / "diverged", "--config.optimizer.lr=1e6")
  assert diverged.returncode == 3, diverged.stderr[-3000:]
  assert re.search(r"diverged: the loss or a gradient is not finite at step \d+ \(epoch 1\)",
                   diverged.stderr)
  assert not (env["base"] / "diverged" / "export").exists()
  bad_labels = run(env, env["base"] / "labels", "--config.dataset.num_classes=5")
  assert bad_labels.returncode == 2
  assert "rldjax_digits" in bad_labels.stderr and "config.dataset.num_classes is 5" in bad_labels.stderr
  assert "Traceback" not in bad_labels.stderr
