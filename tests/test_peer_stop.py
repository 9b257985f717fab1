"""rldjax/peer_stop.py with two real processes: process 0 ending alone
tells its peer, which ends with process 0's status and a line saying so,
unless it is already ending on its own error (then it keeps its own status,
and process 0 waits until it has ended). The launcher's cases (a full disk on
process 0, two Ctrl-C there) are in tests/test_multiprocess.py."""
import json
import os
import subprocess
import sys

from tests.test_multiprocess import ROOT, free_port

_PROCESS = """
import json, os, pathlib, sys, time
import jax
index, port, mode, flag = int(sys.argv[1]), sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index)
from jax._src import distributed
from rldjax import peer_stop
peer_stop.start_watching()
if index == 1:
  if mode == "own_error":  # ending on its own error: only acknowledges process 0's end
    peer_stop.mark_ending()
    flag.touch()
    distributed.global_state.client.blocking_key_value_get(peer_stop.END_KEY.format(1), 60_000)
    time.sleep(0.5)  # the watcher has seen it too
    peer_stop.before_exit(7, "its own error")
    os._exit(7)
  flag.touch()
  time.sleep(60)  # waiting for process 0, as in a collective it will not join
  os._exit(9)
while not flag.exists():
  time.sleep(0.01)
missing = peer_stop.announce_end(4, "storage failed in w: File too large")
print(json.dumps({"missing": missing}), flush=True)
os._exit(4)
"""


def _pair(tmp_path, mode):
  port, flag = str(free_port()), str(tmp_path / "process_1_ready")
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-c", _PROCESS, str(i), port, mode, flag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT) for i in (0, 1)]
  outputs = [p.communicate(timeout=120) for p in procs]
  return [p.returncode for p in procs], outputs


def test_a_waiting_peer_ends_with_process_0s_status_and_says_why(tmp_path):
  codes, outputs = _pair(tmp_path, "waiting")
  assert codes == [4, 4], outputs
  assert json.loads(outputs[0][0]) == {"missing": []}  # it heard from its peer first
  assert outputs[1][1].strip().splitlines()[-1] == (
      "error: process 0 stopped (status 4): storage failed in w: File too large"), outputs[1]


def test_a_peer_ending_on_its_own_error_keeps_its_status_and_process_0_waits_for_it(tmp_path):
  codes, outputs = _pair(tmp_path, "own_error")
  assert codes == [4, 7], outputs
  assert json.loads(outputs[0][0]) == {"missing": []}
  assert "process 0 stopped" not in outputs[1][1], outputs[1]
