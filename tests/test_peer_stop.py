"""rldjax/peer_stop.py with two real processes: process 0 ending alone
tells its peer, which ends with process 0's status and a line saying so
(also when it exits a while after saying that it ends: process 0's service
outlives it), unless it is already ending on its own error (then it keeps its own status,
and process 0 waits until it has ended). Then process 0's waiting against a
stand-in for the coordination service: silent peers, requests that
fail (each a warning in the log, never an exception). The launcher's cases
(a full disk on process 0, two Ctrl-C there) are in tests/test_multiprocess.py."""
import json
import os
import subprocess
import sys
import time

import pytest

from rldjax import peer_stop
from tests.test_multiprocess import ROOT, free_port

_PROCESS = """
import json, os, pathlib, sys, time
import jax
index, port, mode, flag = int(sys.argv[1]), sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index)
from jax._src import distributed
from rldjax import peer_stop
if mode == "slow_exit":  # process 1 exits a while after saying it ends (a loaded machine)
  class SlowToExit:
    def __init__(self, client):
      self.client = client
    def __getattr__(self, name):
      return getattr(self.client, name)
    def key_value_set(self, key, *args, **kwargs):
      self.client.key_value_set(key, *args, **kwargs)
      if key == peer_stop.ENDED_KEY.format(1):
        time.sleep(0.1)
  runtime = peer_stop._runtime()
  peer_stop._runtime = lambda: (SlowToExit(runtime[0]),) + runtime[1:]
peer_stop.start_watching()
if index == 1:
  if mode == "own_error":  # ending on its own error: only acknowledges process 0's end
    peer_stop.mark_ending()
    flag.touch()
    distributed.global_state.client.blocking_key_value_get(peer_stop.END_KEY.format(1), 60_000)
    time.sleep(0.5)  # the watcher has seen it too
    peer_stop.exit_now(7, "its own error", lambda: print("its own last line", flush=True))
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


@pytest.mark.parametrize("mode", ["waiting", "slow_exit"])
def test_a_waiting_peer_ends_with_process_0s_status_and_says_why(tmp_path, mode):
  codes, outputs = _pair(tmp_path, mode)
  assert codes == [4, 4], outputs
  assert json.loads(outputs[0][0]) == {"missing": []}  # it heard from its peer first
  assert outputs[1][1].strip().splitlines()[-1] == (
      "error: process 0 stopped (status 4): storage failed in w: File too large"), outputs[1]


def test_a_peer_ending_on_its_own_error_keeps_its_status_and_process_0_waits_for_it(tmp_path):
  codes, outputs = _pair(tmp_path, "own_error")
  assert codes == [4, 7], outputs
  assert json.loads(outputs[0][0]) == {"missing": []}
  assert "process 0 stopped" not in outputs[1][1], outputs[1]


class _Service:
  """A coordination client for announce_end alone: key-value requests, with
  ``fail`` naming the keys (or request kinds) that raise."""

  def __init__(self, fail=(), ended=()):
    self.keys, self.fail = {}, set(fail)
    self.keys.update({peer_stop.ENDED_KEY.format(i): "1" for i in ended})

  def key_value_set(self, key, value, allow_overwrite=False):
    del allow_overwrite
    if key in self.fail:
      raise RuntimeError(f"UNAVAILABLE: cannot set {key}\nmore")
    self.keys[key] = value

  def key_value_dir_get(self, directory):
    if "dir_get" in self.fail:
      raise RuntimeError("UNAVAILABLE: the service is gone")
    return [(k, v) for k, v in self.keys.items() if k.startswith(directory)]


def _as_process_0(monkeypatch, service, count):
  monkeypatch.setattr(peer_stop, "_runtime", lambda: (service, 0, count))


def test_announce_end_tells_every_peer_and_returns_once_they_have_ended(monkeypatch):
  service = _Service(ended=(1, 2))
  _as_process_0(monkeypatch, service, 3)
  assert peer_stop.announce_end(4, "disk full") == []
  for i in (1, 2):
    assert json.loads(service.keys[peer_stop.END_KEY.format(i)]) == {"status": 4,
                                                                      "message": "disk full"}


def test_announce_end_gives_peers_that_answered_time_to_exit(monkeypatch):
  _as_process_0(monkeypatch, _Service(ended=(1,)), 2)
  start = time.monotonic()
  assert peer_stop.announce_end(4, "disk full", grace=0.3) == []
  assert time.monotonic() - start >= 0.3
  _as_process_0(monkeypatch, _Service(fail={"dir_get"}), 2)  # none answered: no grace
  start = time.monotonic()
  assert peer_stop.announce_end(4, "disk full", grace=30) == [1]
  assert time.monotonic() - start < 30


def test_announce_end_waits_for_a_silent_peer_only_until_its_timeout(monkeypatch, caplog):
  service = _Service(ended=(1,))
  _as_process_0(monkeypatch, service, 3)
  assert peer_stop.announce_end(4, "disk full", timeout=0.1) == [2]
  assert "processes [2] did not say within 0.1 s that they end" in caplog.text


def test_announce_end_reports_failed_requests_and_does_not_wait_on_them(monkeypatch, caplog):
  service = _Service(fail={peer_stop.END_KEY.format(2)}, ended=(1,))
  _as_process_0(monkeypatch, service, 3)
  assert peer_stop.announce_end(4, "disk full", timeout=30) == []  # process 2 was not told
  assert f"telling process 2 that process 0 ends failed: UNAVAILABLE: cannot set " \
         f"{peer_stop.END_KEY.format(2)}" in caplog.text
  caplog.clear()
  _as_process_0(monkeypatch, _Service(fail={"dir_get"}), 3)
  assert peer_stop.announce_end(4, "disk full", timeout=30) == [1, 2]  # at once
  assert "reading which processes have ended failed: UNAVAILABLE: the service is gone" \
      in caplog.text


class _Exit(Exception):
  """What the stand-in for ``os._exit`` raises, with the status."""


def _fake_exit(status):
  raise _Exit(status)


def test_process_0_announces_before_its_last_lines_and_a_peer_says_it_ends_after(monkeypatch):
  events = []
  service = _Service(ended=(1,))
  set_key = service.key_value_set
  service.key_value_set = lambda key, *a, **k: (events.append(f"set {key}"), set_key(key, *a, **k))
  monkeypatch.setattr(peer_stop.os, "_exit", _fake_exit)
  _as_process_0(monkeypatch, service, 2)
  with pytest.raises(_Exit, match="4"):
    peer_stop.exit_now(4, "disk full", lambda: events.append("last lines"))
  assert events == [f"set {peer_stop.END_KEY.format(1)}", "last lines"]
  events.clear()
  monkeypatch.setattr(peer_stop, "_runtime", lambda: (service, 1, 2))
  with pytest.raises(_Exit, match="130"):
    peer_stop.exit_now(130, "interrupted", lambda: events.append("last lines"))
  assert events == ["last lines", f"set {peer_stop.ENDED_KEY.format(1)}"]


def test_a_peer_whose_last_request_fails_keeps_its_last_line_last(monkeypatch, caplog, capsys):
  # As in CI: the key is set, and process 0, which read it and ended, took
  # the service down before the answer came back. Process 0's log names a
  # peer it did not hear from (test_announce_end_waits_for_a_silent_peer...).
  service = _Service()
  set_key = service.key_value_set

  def set_then_lose_the_answer(key, *args, **kwargs):
    set_key(key, *args, **kwargs)
    raise RuntimeError('UNAVAILABLE: Socket closed {grpc_status:14}')
  service.key_value_set = set_then_lose_the_answer
  monkeypatch.setattr(peer_stop, "_runtime", lambda: (service, 1, 2))
  monkeypatch.setattr(peer_stop.os, "_exit", _fake_exit)
  with pytest.raises(_Exit, match="4"):
    peer_stop.end_now(4, "process 0 stopped (status 4): disk full")
  assert service.keys[peer_stop.ENDED_KEY.format(1)] == "1"
  assert capsys.readouterr().err.splitlines()[-1] == (
      "error: process 0 stopped (status 4): disk full")
  assert caplog.records[-1].getMessage() == "process 0 stopped (status 4): disk full"
