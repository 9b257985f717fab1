"""Multi-process runs: starting JAX's distributed runtime, and work done once
by process 0 whose outcome every process learns.

Everything here is a no-op with one process. With several, file writes are
done by process 0 only, and every process reaches the same collectives in the
same order: :func:`on_primary` broadcasts process 0's result *or error* to all
processes, so that no process waits at a collective for a process that has
already stopped.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import zlib

import jax
import numpy as np
from absl import logging

from rldjax import coordinator, errors, peer_stop

_MESSAGE_BYTES = 16384


CONNECT_TIMEOUT_SECONDS = 300  # JAX's own default wait for every process to connect
HEARTBEAT_TIMEOUT_SECONDS = 100  # JAX's own default: a process silent this long is dead


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               timeout_seconds: int = CONNECT_TIMEOUT_SECONDS,
               heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS) -> None:
  """``jax.distributed.initialize`` with explicit values, or with JAX's cluster
  auto-detection (TPU pods, SLURM, MPI) when all three are None.

  Every process waits there until all of them have connected to process 0's
  coordinator. Where one never comes (a process not started, another
  ``--num_processes`` or ``--coordinator_address`` on one host, a port that
  cannot be reached), JAX waits silently and then aborts the process from
  C++ (status 134, "another task died"). Here the wait is logged, and after
  ``timeout_seconds`` the process ends itself first, with status 2 (a run
  that cannot start) and an ``error:`` line naming the settings to check;
  JAX's own deadline is set 60 s later. Explicit settings JAX cannot start
  with (an address without a port, a --process_id out of range, a port in use
  on process 0's host) stop the process at once (:mod:`rldjax.coordinator`).

  ``heartbeat_timeout_seconds`` is JAX's: a process that sent the coordination
  service no heartbeat for that long (frozen, or its host gone) is taken for
  dead, and JAX then aborts the others (status 134) instead of leaving them
  waiting at their next collective.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise errors.ConfigError("--coordinator_address, --num_processes and --process_id go "
                             "together: give all three, or none for cluster auto-detection")
  for flag, seconds in (("--initialization_timeout", timeout_seconds),
                        ("--heartbeat_timeout", heartbeat_timeout_seconds)):
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
      raise errors.ConfigError(f"{flag}: need a whole number of seconds >= 1, got {seconds!r}")
  if all(given):
    coordinator.check_settings(coordinator_address, num_processes, process_id)
    logging.info("process %d of %d: waiting up to %d s for all %d processes to connect to the "
                 "coordinator at %s", process_id, num_processes, timeout_seconds, num_processes,
                 coordinator_address)
    who = (f"process {process_id} of {num_processes}: not all {num_processes} processes "
           f"connected to the coordinator at {coordinator_address} (process 0's)")
    check = ("Check that every process was started and has not stopped (see their logs), with "
             "the same --coordinator_address and --num_processes and its own --process_id (0 "
             f"to {num_processes - 1}), and that process 0's host and port can be reached from "
             "every host")
    kwargs = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  else:
    logging.info("waiting up to %d s for the processes JAX detects to connect", timeout_seconds)
    who = "not all the processes JAX detected (config.distributed) connected to their coordinator"
    check = "Check that every process of the job was started and has not stopped (see their logs)"
    kwargs = {}
  message = (f"{who} within {timeout_seconds} s. {check}; or wait longer with "
             "--initialization_timeout=SECONDS.")
  connected = threading.Event()
  threading.Thread(target=_end_unless_connected, args=(connected, timeout_seconds, message),
                   name="rldjax-connect-watchdog", daemon=True).start()
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout_seconds + 60,
                               heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  except ValueError as err:
    if kwargs:
      raise
    raise errors.ConfigError(
        f"config.distributed=True: JAX detected no cluster to join here ({err}): it reads the "
        "job's environment on TPU pod slices, under SLURM and with MPI launchers; elsewhere "
        "give every process --coordinator_address, --num_processes and --process_id") from err
  finally:
    connected.set()
  peer_stop.start_watching()  # process 0 ending alone ends the others with its status


def _end_unless_connected(connected: threading.Event, seconds: float, message: str) -> None:
  """Ends the process with status 2 and ``message`` unless ``connected`` is
  set within ``seconds`` (JAX's connect holds the main thread meanwhile)."""
  if connected.wait(seconds):
    return
  try:
    logging.error("%s", message)
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
  except OSError:
    pass
  os._exit(errors.ConfigError.exit_code)  # pylint: disable=protected-access


def replicate(mesh, tree):
  """``tree`` (host or single-device values, the same on every process) as
  arrays replicated over ``mesh``, which may span processes."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def put(leaf):
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree_util.tree_map(put, jax.device_get(tree))  # one read-back for the whole tree


def is_primary() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _broadcast_bytes(payload: bytes | None) -> bytes:
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  buffer = np.zeros(_MESSAGE_BYTES + 4, np.uint8)
  if payload is not None:
    payload = payload[:_MESSAGE_BYTES]
    buffer[:4] = np.frombuffer(np.uint32(len(payload)).tobytes(), np.uint8)
    buffer[4:4 + len(payload)] = np.frombuffer(payload, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  size = int(np.frombuffer(out[:4].tobytes(), np.uint32)[0])
  return out[4:4 + size].tobytes()


def on_primary(fn, *args, **kwargs):
  """Runs ``fn`` on process 0 and returns its (JSON-serialisable) result on
  every process; a :class:`~rldjax.errors.RunError` it raises is raised on
  every process, with the same type and message."""
  if jax.process_count() == 1:
    return fn(*args, **kwargs)
  outcome = None
  if is_primary():
    try:
      outcome = {"result": fn(*args, **kwargs)}
    except errors.RunError as err:
      outcome = {"error": type(err).__name__, "message": str(err)}
    except Exception as err:  # pylint: disable=broad-except
      outcome = {"error": "RunError", "message": f"process 0 failed: {type(err).__name__}: {err}"}
  received = json.loads(_broadcast_bytes(json.dumps(outcome).encode() if is_primary() else None))
  if "error" in received:
    raise getattr(errors, received["error"], errors.RunError)(received["message"])
  return received["result"]


def check_same_as_primary(what: str, values: dict) -> None:
  """Raises on every process if ``values`` (a flat dict of JSON values) differs
  on any process from process 0's; that process's message names each key."""
  if jax.process_count() == 1:
    return
  mine = json.loads(json.dumps(values, sort_keys=True, default=str))
  payload = json.dumps(mine, sort_keys=True).encode()
  if len(payload) > _MESSAGE_BYTES:
    raise ValueError(f"{what}: {len(payload)} bytes, more than the {_MESSAGE_BYTES} a "
                     "broadcast carries")
  primary = json.loads(_broadcast_bytes(payload if is_primary() else None))
  differences = [f"{k}: {primary.get(k, '<absent>')!r} on process 0, {mine.get(k, '<absent>')!r} "
                 "here" for k in sorted(set(primary) | set(mine)) if primary.get(k) != mine.get(k)]
  raise_if_any_failed("; ".join(differences) or None, what)


def check_shared_directory(path: str, flag: str) -> None:
  """Raises on every process unless every process sees ``path`` as the same
  directory as process 0 (the same shared storage, not each host's local
  disk or another path): process 0 writes a file with a fresh token there and
  every process reads it back. Without this, Orbax's first multi-process save
  waits for files that never appear (a ``TimeoutError`` after minutes). A
  no-op with one process. ``flag`` names the setting in messages."""
  if jax.process_count() == 1:
    return
  def write():
    name = f".rldjax_shared_check.{os.getpid()}.{secrets.token_hex(8)}"
    with open(os.path.join(path, name), "w") as f:
      f.write(name)
    return os.path.abspath(path), name

  where, name = on_primary(write)  # process 0's path and token, on every process
  failure = None
  try:
    with open(os.path.join(path, name)) as f:
      seen = f.read() == name
  except OSError:
    seen = False
  if not seen:
    failure = (f"{flag} is {os.path.abspath(path)} here, and the file process 0 wrote in its "
               f"{flag} ({where}) is not there: every process must see one shared directory "
               "(the same path on storage all hosts mount)")
  try:
    raise_if_any_failed(failure, f"checking that every process sees the same {flag}")
  finally:
    if is_primary():
      try:
        os.remove(os.path.join(path, name))
      except OSError:
        pass


def fingerprint(tree) -> str:
  """CRC-32 (hex) of every array of ``tree`` (shapes, dtypes and bytes, in
  tree order): equal on two processes when they hold the same values."""
  crc = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    host = np.ascontiguousarray(np.asarray(leaf))
    crc = zlib.crc32(f"{jax.tree_util.keystr(path)}{host.shape}{host.dtype}".encode(), crc)
    crc = zlib.crc32(host.view(np.uint8).reshape(-1), crc)
  return f"{crc:08x}"


def stop_if_any(error: errors.RunError | None, what: str) -> None:
  """Collective: raises on every process if ``error`` (this process's, or
  None) is set on any. One process: raises ``error`` itself."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  raise_if_any_failed(str(error) if error is not None else None, what)


def raise_if_any_failed(failure: str | None, what: str) -> None:
  """After work each process did on its own: raises on every process if it
  failed on any (``failure`` is this process's error message, or None)."""
  if jax.process_count() == 1:
    if failure:
      raise errors.RunError(f"{what} failed: {failure}")
    return
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  failed = np.asarray(multihost_utils.process_allgather(np.int32(failure is not None)))
  if failed.any():
    where = ", ".join(str(i) for i in np.flatnonzero(failed))
    raise errors.RunError(f"{what} failed on process {where}: "
                          f"{failure or 'see that process log'}")
