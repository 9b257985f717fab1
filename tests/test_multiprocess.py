"""Multi-host training with real processes on 127.0.0.1 (JAX's cross-process
CPU collectives): two processes from a fresh data directory, both killed
mid-epoch and relaunched, finish with exactly the history and weights of one
uninterrupted process driving 2 devices (the same per-device programs; a
2-way sum is exact whichever order it takes).

A single-device run is a different floating-point computation (each
convolution and batch-norm sum over 64 images instead of two halves): its
training stays within ~1e-6 of the sharded one for a few dozen steps, until a
ReLU input within rounding of zero flips and the runs separate (measured on
this config for two single-device runs whose input gradients only sum in
another order: within 1e-6 for 26 steps, 1e-4 at step 27; a run from weights
perturbed by 1e-7 separates too, ten steps later). So the equivalence of
sharded and single-device steps is tested where it holds exactly, in float64
(``tests/test_multidevice.py``, 1 vs 8 devices, to 1e-12), and single-device
runs of the launcher in ``tests/test_training.py`` and
``tests/test_unattended.py``."""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rldjax import export
from rldjax.data import builders
from tests import foreground
from tests.image_folder import write_image_folder

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"--config={ROOT}/experiments/configs/digits.py:method=vanilla,model=teacher,epochs=2"
# The digits student (resnet8): fewer batch norms, so fewer all-reduces a step,
# each ~1 ms between two processes on this CPU (JAX's gloo collectives): a pair
# trains ~1.7x as fast; it learns more slowly (47.6% top-1 after 2 epochs, the
# teacher 94.4%). The teacher stays where a test needs its larger checkpoint.
STUDENT = CONFIG.replace("model=teacher", "model=student")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return tmp_path_factory.mktemp("multiprocess")


def environment(base, devices=1):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
             RLDJAX_CACHE_DIR=str(base / "jax_cache"))
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def launch(base, workdir, data_dir, *extra, devices=1, max_file_bytes=None, config=CONFIG):
  cmd = [sys.executable, "-m", "experiments.train", config, f"--workdir={workdir}",
         f"--config.dataset.data_dir={data_dir}", "--config.checkpoint.every_steps=5", *extra]
  if max_file_bytes:  # writes of larger files fail (EFBIG), as writes to a full disk do
    cmd = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit("
           f"resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
           "os.execv(sys.argv[1], sys.argv[1:])", *cmd]
  log = open(base / f"log_{time.time_ns()}.txt", "w+")  # a file: a pipe could fill and block
  proc = foreground.launch(cmd, env=environment(base, devices), stdout=log,
                           stderr=subprocess.STDOUT, text=True)
  proc.log = log
  return proc


def launch_pair(base, workdir, data_dir, *extra, max_file_bytes=None, config=CONFIG):
  address = f"127.0.0.1:{free_port()}"
  return [launch(base, workdir, data_dir, f"--coordinator_address={address}",
                 "--num_processes=2", f"--process_id={i}", *extra,
                 max_file_bytes=max_file_bytes, config=config) for i in (0, 1)]


def logs_when_done(procs, timeout=240):
  """Each process's log, once it has ended."""
  logs = []
  for p in procs:
    p.wait(timeout=timeout)
    p.log.seek(0)
    logs.append(p.log.read())
    p.log.close()
  return logs


def finish(procs, timeout=240):
  logs = logs_when_done(procs, timeout)
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  return logs


def results(workdir):
  return json.loads((workdir / "results.json").read_text())


def weights(workdir, name="last"):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(
      export.load_model(str(workdir / "export" / name))[2])]


def checkpoint_steps(workdir):
  """The steps of the complete checkpoints (not Orbax's temporary directories)."""
  return [int(p.name) for p in workdir.glob("checkpoints/*") if p.name.isdigit()]


def wait_for_a_checkpoint(workdir, newer_than=-1, timeout=180):
  deadline = time.time() + timeout
  while max(checkpoint_steps(workdir), default=-1) <= newer_than and time.time() < deadline:
    time.sleep(0.1)


def kill_after_a_checkpoint(procs, workdir, first, end):
  """SIGKILLs every process once a checkpoint of a step in [first, end)
  exists; returns their logs and the checkpointed steps at the kill."""
  deadline = time.time() + 180
  while time.time() < deadline:
    steps = checkpoint_steps(workdir)
    if any(first <= s < end for s in steps):
      break
    time.sleep(0.1)
  logs = []
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.log.seek(0)
    logs.append(p.log.read())
    p.log.close()
  assert any(first <= s < end for s in steps), (
      f"no checkpoint in steps {first}..{end - 1} before the kill: {steps}")
  return logs, steps


def test_two_processes_killed_and_relaunched_match_one_process(base):
  """One process driving 2 devices, uninterrupted, against two processes
  (from a data directory nobody has prepared yet) killed mid-run and
  relaunched: the same history and bit-identical weights. Both properties
  (two processes = one with two devices; a killed pair resumes exactly) are
  needed for the equality, so one interrupted pair tests both."""
  # Kill both mid-run, after a checkpoint, then relaunch both.
  workdir = base / "killed"
  logs, _ = kill_after_a_checkpoint(
      launch_pair(base, workdir, base / "data_fresh", config=STUDENT), workdir, 5, 22)
  assert not (workdir / "export").exists()
  # The offline dataset was prepared quietly (no "Downloading ..." lines).
  for log in logs + finish(launch_pair(base, workdir, base / "data_fresh", config=STUDENT)):
    assert "Downloading" not in log

  two = results(workdir)
  assert two["finished"] and two["epochs_completed"] == 2
  # The reference, on the data directory the pair prepared (preparing it again
  # would only repeat that work).
  finish([launch(base, base / "one_two_devices", base / "data_fresh", devices=2,
                 config=STUDENT)])
  one = results(base / "one_two_devices")
  assert one["finished"] and one["epochs_completed"] == 2
  # And it learns: the student (the teacher, twice as slow in a pair, reached
  # 94.4 here) has 34.3 then 47.6% top-1 after its 2 epochs; chance is 10%.
  assert one["history"][-1]["top1"] > max(40.0, one["history"][0]["top1"] + 5)
  assert two["history"] == one["history"]
  for a, b in zip(weights(base / "one_two_devices"), weights(workdir)):
    np.testing.assert_array_equal(a, b)
  for name in ("best", "last"):
    assert (workdir / "export" / name / "model.json").exists()
  assert not list((workdir / "export").glob("*.tmp"))


def test_a_storage_failure_on_one_process_ends_both(base):
  """Process 0 writes the run's files; when it cannot (files capped at 100
  kB: its first checkpoint's ~235 kB data file fails, its log fits), it ends
  at once with status 4 and its error, instead of both waiting in Orbax's
  barriers (they did, for 20 minutes, with asynchronous multi-process
  saves). Its peer, waiting in a collective, ends with the same status and
  says why (rldjax/peer_stop.py); before, JAX's client aborted it when
  process 0 was gone (SIGABRT and a dump of extension modules, 2 tries of 3)."""
  data_dir = base / "data_capped"
  builders.load_builder("rldjax_digits", str(data_dir))  # prepared before the cap
  workdir = base / "capped"
  t0 = time.time()
  procs = launch_pair(base, workdir, data_dir, "--compilation_cache=none",
                      max_file_bytes=100_000)
  logs = logs_when_done(procs)
  assert procs[0].returncode == 4, logs[0][-4000:]
  assert f"error: storage failed in {workdir}: " in logs[0] and "File too large" in logs[0]
  assert procs[1].returncode == 4, logs[1][-4000:]
  assert logs[1].strip().splitlines()[-1].startswith(
      f"error: process 0 stopped (status 4): storage failed in {workdir}: "), logs[1][-4000:]
  assert time.time() - t0 < 200
  assert not (workdir / "export").exists() and not (workdir / "run.lock").exists()


def test_a_pair_whose_lock_is_taken_over_stops_on_both_processes(base):
  """Process 0 holds run.lock for both; when another launch takes it over
  (the pair's heartbeat judged stale, say after its hosts were cut off),
  process 0 finds it before the next checkpoint and both processes stop with
  status 2 and the same message, leaving the new holder's lock in place."""
  data_dir = base / "data_taken_over"
  builders.load_builder("rldjax_digits", str(data_dir))
  workdir = base / "taken_over"
  procs = launch_pair(base, workdir, data_dir, "--config.num_epochs=400", config=STUDENT)
  lock = workdir / "run.lock"
  wait_for_a_checkpoint(workdir)
  theirs = json.dumps({"host": "another-host", "pid": 4242, "token": "theirs",
                       "heartbeat_seconds": 15})
  lock.write_text(theirs)
  logs = logs_when_done(procs, timeout=120)
  assert [p.returncode for p in procs] == [2, 2], [log[-3000:] for log in logs]
  for log in logs:
    assert (f"run.lock of workdir {workdir} is no longer this run's: taken over by process 4242 "
            "on another-host") in log.splitlines()[-1], log[-3000:]
  assert lock.read_text() == theirs
  assert not (workdir / "export").exists()


def test_a_pair_whose_process_1_is_interrupted_saves_and_stops_then_resumes(base):
  """Ctrl-C in process 1's terminal (SIGINT to it alone): both processes
  save the same step and stop with status 130 and the same line, and
  results.json says "interrupted" at that step (before, only the interrupted
  process stopped, at once, and process 0's next collective failed: the
  steps since the last checkpoint were lost). The same commands resume from
  that step; a second Ctrl-C there stops process 1 at once (130), and
  process 0, whose collective then fails, records "failed" and ends with its
  traceback, a line saying another process stopped, and status 1 at once
  (before, it waited in JAX's shutdown barrier for its dead peer, 5
  minutes, then JAX aborted it: status 134)."""
  data_dir = base / "data_interrupted"
  builders.load_builder("rldjax_digits", str(data_dir))
  workdir = base / "interrupted"
  procs = launch_pair(base, workdir, data_dir, "--config.num_epochs=400", config=STUDENT)
  wait_for_a_checkpoint(workdir)
  procs[1].send_signal(signal.SIGINT)
  logs = logs_when_done(procs, timeout=120)
  assert [p.returncode for p in procs] == [130, 130], [log[-3000:] for log in logs]
  saved = results(workdir)
  assert saved["status"] == "interrupted", saved
  step = saved["interrupted_at_step"]
  for log in logs:
    assert log.strip().splitlines()[-1] == (
        f"error: interrupted (Ctrl-C or SIGINT) at step {step}; checkpoint saved in "
        f"{workdir}/checkpoints. Rerun the same command to resume."), log[-3000:]
  assert max(checkpoint_steps(workdir)) == step
  assert not (workdir / "run.lock").exists()

  procs = launch_pair(base, workdir, data_dir, "--config.num_epochs=400", config=STUDENT)
  wait_for_a_checkpoint(workdir, newer_than=step)  # both processes train: their handlers are set
  procs[1].send_signal(signal.SIGINT)
  time.sleep(0.3)  # the handler has run: the second one interrupts at once
  procs[1].send_signal(signal.SIGINT)
  logs = logs_when_done(procs, timeout=120)
  assert f"resumed from step {step} " in logs[0], logs[0][-3000:]
  assert [p.returncode for p in procs] == [1, 130], [log[-3000:] for log in logs]
  assert logs[1].strip().splitlines()[-1] == (
      "error: interrupted (Ctrl-C or SIGINT); the same command resumes the run from its last "
      "checkpoint (or starts it again if it wrote none)"), logs[1][-3000:]
  assert "Traceback" in logs[0] and re.search(r"Connection (closed|reset) by peer", logs[0]), \
      logs[0][-3000:]
  assert logs[0].strip().splitlines()[-1].startswith(
      "error: process 0 stopped: a collective with the other processes failed ("), logs[0][-3000:]
  assert results(workdir)["status"] == "failed"
  assert not (workdir / "run.lock").exists()


def test_a_frozen_process_is_found_within_heartbeat_timeout(base):
  """A process that stops answering without dying (SIGSTOP: a frozen host)
  makes no collective fail; JAX's coordination service finds it when its
  heartbeats stop. ``--heartbeat_timeout=10`` has the other process stopped
  (JAX aborts it: status 134) within seconds, where JAX's default, 100 s,
  took 92 s by hand (and 52-90 s in earlier runs)."""
  data_dir = base / "data_frozen"
  builders.load_builder("rldjax_digits", str(data_dir))
  workdir = base / "frozen"
  procs = launch_pair(base, workdir, data_dir, "--config.num_epochs=400",
                      "--heartbeat_timeout=10", config=STUDENT)
  wait_for_a_checkpoint(workdir)
  assert checkpoint_steps(workdir) and [p.poll() for p in procs] == [None, None], \
      "the pair did not reach its first checkpoint"  # both train: the stop is what ends them
  procs[1].send_signal(signal.SIGSTOP)
  t0 = time.time()
  try:
    procs[0].wait(timeout=60)
  finally:
    procs[1].kill()
  waited = time.time() - t0
  logs = logs_when_done(procs, timeout=30)
  assert procs[0].returncode in (-signal.SIGABRT, 134), logs[0][-3000:]
  assert "the JAX distributed service detected fatal errors" in logs[0], logs[0][-3000:]
  assert waited < 40, waited  # 10 s, the heartbeat interval, and the abort


def test_a_pair_whose_process_0_is_interrupted_twice_ends_both_with_its_status(base):
  """Two Ctrl-C in process 0's terminal: the second stops it at once (130).
  Process 0 runs JAX's coordination service, so its peer, blocked in a
  collective with it, cannot learn of that from the collective as process 0
  does in the test above; process 0 tells it first (rldjax/peer_stop.py) and
  it ends with status 130 and a line saying so. Before, JAX's client aborted
  it when process 0 was gone (SIGABRT, a dump of extension modules, no
  word of why)."""
  data_dir = base / "data_interrupted_0"
  builders.load_builder("rldjax_digits", str(data_dir))
  workdir = base / "interrupted_0"
  for _ in range(3):  # again (resuming) if the pair's stop on the first one was quicker
    newest = max(checkpoint_steps(workdir), default=-1) if workdir.exists() else -1
    procs = launch_pair(base, workdir, data_dir, "--config.num_epochs=400", config=STUDENT)
    wait_for_a_checkpoint(workdir, newer_than=newest)  # both train: their handlers are set
    procs[0].send_signal(signal.SIGINT)
    # The second as soon as the first's handler has run (it logs after making
    # the next one a KeyboardInterrupt), before the pair's save on the first
    # one (a few hundred ms: a sleep of 0.3 s was too long) is done.
    deadline = time.time() + 60
    while "received signal 2 (Ctrl-C)" not in pathlib.Path(procs[0].log.name).read_text():
      assert time.time() < deadline and procs[0].poll() is None
      time.sleep(0.002)
    procs[0].send_signal(signal.SIGINT)
    logs = logs_when_done(procs, timeout=120)
    if not all(" at step " in log.strip().splitlines()[-1] for log in logs):
      break
  assert [p.returncode for p in procs] == [130, 130], [log[-3000:] for log in logs]
  interrupted = ("interrupted (Ctrl-C or SIGINT); the same command resumes the run from its "
                 "last checkpoint (or starts it again if it wrote none)")
  assert logs[0].strip().splitlines()[-1] == f"error: {interrupted}", logs[0][-3000:]
  assert logs[1].strip().splitlines()[-1] == (
      f"error: process 0 stopped (status 130): {interrupted}"), logs[1][-3000:]
  assert "Extension modules" not in logs[1] and "Terminating process" not in logs[1]
  assert results(workdir)["status"] != "finished"
  assert not (workdir / "run.lock").exists()


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_pressed_on_while_a_stopped_run_exits_changes_nothing(base, processes):
  """Ctrl-C held down: the run stops at the first one (130, checkpoint saved,
  its last line), and the ones that reach it while it exits (JAX's shutdown,
  then the interpreter's teardown: up to ~1 s here) are ignored. They raised a
  KeyboardInterrupt into the exit's cleanup (a traceback after the last line)
  or, during the teardown, where Python has restored SIGINT's default action,
  killed the process (status -2, not 130)."""
  data_dir = base / f"data_held_{processes}"
  builders.load_builder("rldjax_digits", str(data_dir))
  workdir = base / f"held_{processes}"
  if processes == 1:
    procs = [launch(base, workdir, data_dir, "--config.num_epochs=400", config=STUDENT)]
  else:
    procs = launch_pair(base, workdir, data_dir, "--config.num_epochs=400", config=STUDENT)
  wait_for_a_checkpoint(workdir)
  procs[0].send_signal(signal.SIGINT)
  deadline = time.time() + 120
  while "error: interrupted" not in pathlib.Path(procs[0].log.name).read_text():
    assert time.time() < deadline and procs[0].poll() is None
    time.sleep(0.002)
  sent = 0
  while procs[0].poll() is None:  # every 10 ms until it has exited
    procs[0].send_signal(signal.SIGINT)
    sent += 1
    time.sleep(0.01)
  logs = logs_when_done(procs, timeout=120)
  assert sent >= 1, sent  # it was still exiting
  assert [p.returncode for p in procs] == [130] * processes, [log[-3000:] for log in logs]
  for log in logs:
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: interrupted (Ctrl-C or SIGINT) at step "), log[-3000:]
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]


def test_processes_launched_with_different_configs_stop_before_training(base):
  """A pair whose process 1 got another seed would train on a mix of two data
  orders (each process gathers its share of its own permutation) without a
  sign; both stop with status 2 before touching the workdir, and process 1
  names the field."""
  data_dir = base / "data_mixed"
  builders.load_builder("rldjax_digits", str(data_dir))
  workdir = base / "mixed"
  address = f"127.0.0.1:{free_port()}"
  pair = ["--num_processes=2", f"--coordinator_address={address}"]
  procs = [launch(base, workdir, data_dir, *pair, "--process_id=0"),
           launch(base, workdir, data_dir, *pair, "--process_id=1", "--config.seed=1")]
  logs = logs_when_done(procs, timeout=120)
  assert [p.returncode for p in procs] == [2, 2], [log[-2000:] for log in logs]
  assert "failed on process 1: config.seed: 0 on process 0, 1 here" in logs[1]
  assert "failed on process 1: see that process log" in logs[0]
  assert not workdir.exists()


def test_processes_that_see_different_workdirs_stop_before_training(base):
  """Each host given its own local path: Orbax's first save would wait minutes
  for files that never appear and then report a TimeoutError as a storage
  failure. Process 0 writes a token in its workdir and every process reads
  it back: here both stop at once with status 2, process 1 naming both paths."""
  data_dir = base / "data_split_workdirs"
  builders.load_builder("rldjax_digits", str(data_dir))
  address = f"127.0.0.1:{free_port()}"
  pair = ["--num_processes=2", f"--coordinator_address={address}"]
  procs = [launch(base, base / "here", data_dir, *pair, "--process_id=0"),
           launch(base, base / "there", data_dir, *pair, "--process_id=1")]
  logs = logs_when_done(procs, timeout=120)
  assert [p.returncode for p in procs] == [2, 2], [log[-2000:] for log in logs]
  assert (f"--workdir is {base / 'there'} here, and the file process 0 wrote in its --workdir "
          f"({base / 'here'}) is not there") in logs[1]
  assert "failed on process 1: see that process log" in logs[0]
  assert not (base / "there").exists() and os.listdir(base / "here") == []


def test_a_process_whose_peers_never_connect_stops_with_status_2(base):
  """Process 0 started without process 1, and process 1 without process 0
  (say a typo in the other host's command): each logs that it waits, and
  after --initialization_timeout ends with status 2 and a line naming the
  flags to check, before touching its workdir. Before, each waited 5
  minutes in silence and JAX aborted it (status 134, "This most likely
  indicates that another task died")."""
  data_dir = base / "data_alone"
  builders.load_builder("rldjax_digits", str(data_dir))
  addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
  t0 = time.time()
  procs = [launch(base, base / f"alone_{i}", data_dir, f"--coordinator_address={addresses[i]}",
                  "--num_processes=2", f"--process_id={i}", "--initialization_timeout=5")
           for i in (0, 1)]
  logs = logs_when_done(procs, timeout=120)
  assert [p.returncode for p in procs] == [2, 2], [log[-3000:] for log in logs]
  assert time.time() - t0 < 60
  for i, log in enumerate(logs):
    assert (f"process {i} of 2: waiting up to 5 s for all 2 processes to connect to the "
            f"coordinator at {addresses[i]}") in log
    assert log.strip().splitlines()[-1] == (
        f"error: process {i} of 2: not all 2 processes connected to the coordinator at "
        f"{addresses[i]} (process 0's) within 5 s. Check that every process was started and "
        "has not stopped (see their logs), with the same --coordinator_address and "
        "--num_processes and its own --process_id (0 to 1), and that process 0's host and port "
        "can be reached from every host; or wait longer with --initialization_timeout=SECONDS."
    ), log[-3000:]
    assert not (base / f"alone_{i}").exists()


def test_process_0_given_a_port_in_use_stops_with_status_2(base):
  """Process 0 starts JAX's coordination service on the --coordinator_address
  port; where another program listens there, the service crashed the process
  (segmentation fault, status 139; another run's coordinator there was
  aborted instead). Now it stops at once with status 2 and a line naming the
  flag, before touching its workdir; a --process_id out of range likewise
  (a ValueError traceback from JAX, status 1)."""
  with socket.socket() as holder:
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    address = f"127.0.0.1:{holder.getsockname()[1]}"
    cases = [("0", f"error: --coordinator_address={address}: process 0 cannot start the "
              f"coordinator on port {holder.getsockname()[1]} of this host: the port is in use"),
             ("2", "error: --process_id=2: need 0 to 1 with --num_processes=2 (each process "
              "its own)")]
    for process_id, message in cases:
      done = subprocess.run(
          [sys.executable, "-m", "experiments.train", CONFIG, f"--workdir={base / 'port'}",
           f"--coordinator_address={address}", "--num_processes=2",
           f"--process_id={process_id}", "--initialization_timeout=60"],
          env=environment(base), capture_output=True, text=True, timeout=120, cwd=ROOT)
      assert done.returncode == 2, done.stderr[-3000:]
      assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-3000:]
      assert not (base / "port").exists()


def test_cluster_detection_where_there_is_no_cluster_stops_with_status_2(base):
  """config.distributed=True outside a cluster JAX can detect: status 2 and a
  line saying what the setting does and what to give instead (it was a
  ValueError traceback, status 1)."""
  env = {k: v for k, v in environment(base).items()
         if not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_", "TPU_", "CLOUD_TPU",
                              "JAX_COORDINATOR", "MEGASCALE_"))}
  done = subprocess.run([sys.executable, "-m", "experiments.train", CONFIG,
                         f"--workdir={base / 'no_cluster'}", "--config.distributed=True"],
                        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert done.returncode == 2, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.distributed=True: JAX detected no cluster to join here (")
  assert last.endswith("elsewhere give every process --coordinator_address, --num_processes and "
                       "--process_id"), last
  assert not (base / "no_cluster").exists()


def test_what_one_process_cannot_read_stops_both(base):
  """config.dataset.data_dir and config.teacher.checkpoint may name another
  path on each process. A process whose copy is missing, or holds another
  teacher, stops both at once with status 2, naming what it found (a process
  missing its dataset left its peer waiting until JAX's 5-minute shutdown
  barrier)."""
  from rldjax import models  # pylint: disable=import-outside-toplevel
  data_dir = base / "data_teachers"
  builders.load_builder("rldjax_digits", str(data_dir))
  module = models.create("digits/resnet14")
  for seed in (0, 1):
    variables = jax.jit(lambda k: module.init(k, np.zeros((1, 8, 8, 3), np.float32),
                                              train=False))(jax.random.key(seed, impl="rbg"))
    export.save_model(str(base / f"teacher{seed}"), "digits/resnet14", jax.device_get(variables))
  kd = f"--config={ROOT}/experiments/configs/digits.py:method=kd,epochs=1"
  cases = [
      (CONFIG, [f"--config.dataset.data_dir={base / 'data_empty'}"],
       f"TFDS dataset 'rldjax_digits' is not prepared in {base / 'data_empty'}"),
      (kd, [f"--config.teacher.checkpoint={base / 'no_teacher'}"],
       f"config.teacher.checkpoint: no exported model at {base / 'no_teacher'}"),
      (kd, [f"--config.teacher.checkpoint={base / 'teacher1'}"],
       "config.teacher.checkpoint weights (CRC-32): '"),
  ]
  for i, (config, process_1, message) in enumerate(cases):
    address = f"127.0.0.1:{free_port()}"
    pair = ["--num_processes=2", f"--coordinator_address={address}"]
    workdir = base / f"one_cannot_read_{i}"
    t0 = time.time()
    procs = [launch(base, workdir, data_dir, *pair, "--process_id=0",
                    f"--config.teacher.checkpoint={base / 'teacher0'}", config=config),
             launch(base, workdir, data_dir, *pair, "--process_id=1",
                    f"--config.teacher.checkpoint={base / 'teacher0'}", *process_1,
                    config=config)]
    logs = logs_when_done(procs, timeout=120)
    assert [p.returncode for p in procs] == [2, 2], [log[-3000:] for log in logs]
    assert message in logs[1].splitlines()[-1], logs[1][-3000:]
    assert "failed on process 1: see that process log" in logs[0].splitlines()[-1]
    assert time.time() - t0 < 100
    assert not (workdir / "checkpoints").exists()


def test_a_streaming_pair_killed_mid_epoch_resumes_bit_identical(base):
  """The streaming (tf.data) path with two processes, each reading its own
  share of an image folder: both killed after a checkpoint in the middle of
  the second epoch and relaunched (process 1 with another
  ``dataset.host_threads``, which may differ between processes), the pair
  ends with the history and weights of a pair that was not stopped, and
  evaluation counts every test image once."""
  root = write_image_folder(base / "image_folder", (("train", 40), ("test", 11)), separable=True)
  streaming = [f"--config.dataset.name=image_folder:{root}", "--config.dataset.kind=imagenet",
               "--config.dataset.image_size=32", "--config.dataset.num_classes=2",
               "--config.dataset.in_memory=False", "--config.dataset.shuffle_buffer=16",
               "--config.batch_size=8", "--config.student.tag=cifar/resnet8"]  # 10 steps an epoch
  finish(launch_pair(base, base / "stream_straight", base / "unused", *streaming))
  workdir = base / "stream_killed"
  _, steps = kill_after_a_checkpoint(
      launch_pair(base, workdir, base / "unused", *streaming), workdir, 11, 20)
  address = f"127.0.0.1:{free_port()}"
  logs = finish([launch(base, workdir, base / "unused", f"--coordinator_address={address}",
                        "--num_processes=2", f"--process_id={i}", *streaming,
                        f"--config.dataset.host_threads={i}") for i in (0, 1)])
  # Step 15 (mid-epoch) unless the kill came late.
  assert f"resumed from step {max(steps)} " in logs[0]
  straight, resumed = results(base / "stream_straight"), results(workdir)
  assert straight["finished"] and straight["epochs_completed"] == 2
  assert resumed["history"] == straight["history"]
  for a, b in zip(weights(base / "stream_straight"), weights(workdir)):
    np.testing.assert_array_equal(a, b)
  assert "top-1" in logs[0] and "22 examples)" in logs[0]
