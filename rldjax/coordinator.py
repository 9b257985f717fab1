"""Checks of a multi-process run's explicit settings before JAX's distributed
runtime starts (:func:`rldjax.distributed.initialize` calls
:func:`check_settings`), each a :class:`rldjax.errors.ConfigError` (status 2)
naming the flag:

* ``--coordinator_address`` is ``HOST:PORT`` (``[IPv6]:PORT`` too) with a
  port in 1..65535; without a port JAX raised an ``IndexError`` traceback.
* ``--num_processes`` >= 1 and ``0 <= --process_id < --num_processes``; JAX
  raised a ``ValueError`` traceback.
* On process 0, which starts JAX's coordination service on that port on every
  interface (``[::]:PORT``, or ``$JAX_COORDINATOR_BIND_ADDRESS``), the port is
  free. Measured with jaxlib 0.10: a port held by another program made the
  service crash the process (segmentation fault, status 139); a port held by
  another run's coordinator (another job on the host given the same port) was
  shared with it, and the second process 0's registration aborted the first
  run (status 134, "another task died"). A port left in TIME_WAIT by a run
  that ended is free (the service binds with SO_REUSEADDR, as the check does).
  Another program may still take the port between the check and the bind.

Imports neither JAX nor TensorFlow.
"""
from __future__ import annotations

import errno
import os
import socket

from rldjax.errors import ConfigError

BIND_ADDRESS_VARIABLE = "JAX_COORDINATOR_BIND_ADDRESS"  # JAX's override of the bind address


def split_address(address: str, flag: str) -> tuple[str, int]:
  """(host, port) of ``HOST:PORT`` or ``[IPv6]:PORT``; ConfigError naming ``flag``."""
  host, sep, port = str(address).rpartition(":")
  if host.startswith("[") and host.endswith("]"):
    host = host[1:-1]
  if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
    raise ConfigError(f"{flag}={address}: need HOST:PORT with a port from 1 to 65535 "
                      "(process 0's host, and a free port there)")
  return host, int(port)


def check_settings(coordinator_address: str, num_processes, process_id) -> None:
  """Raises ConfigError for settings JAX cannot start with (module docstring)."""
  _, port = split_address(coordinator_address, "--coordinator_address")
  for flag, value in (("--num_processes", num_processes), ("--process_id", process_id)):
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{flag}: need a whole number, got {value!r}")
  if num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: need at least 1 process")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id}: need 0 to {num_processes - 1} with "
                      f"--num_processes={num_processes} (each process its own)")
  if process_id == 0:
    bind = os.environ.get(BIND_ADDRESS_VARIABLE)
    if bind:
      host, port = split_address(bind, f"${BIND_ADDRESS_VARIABLE}")
    else:
      host = "::"
    problem = _cannot_listen(host, port)
    if problem:
      where = (f"${BIND_ADDRESS_VARIABLE}={bind}" if bind
               else f"--coordinator_address={coordinator_address}")
      raise ConfigError(
          f"{where}: process 0 cannot start the coordinator on port {port} of this host: "
          f"{problem}. Give every process another --coordinator_address port (one no other "
          "program or run on this host uses), or stop what holds it")


def _cannot_listen(host: str, port: int) -> str | None:
  """Why a TCP socket cannot be bound to (host, port) as the coordination
  service binds it, or None (also when the check itself cannot tell)."""
  if host in ("::", ""):  # every interface; the service falls back to IPv4 without IPv6
    candidates = [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", ("::", port)),
                  (socket.AF_INET, socket.SOCK_STREAM, 0, "", ("0.0.0.0", port))]
  else:
    try:
      candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE)
    except socket.gaierror:
      return None  # the service reports an address it cannot resolve itself
  for family, kind, proto, _, address in candidates:
    try:
      sock = socket.socket(family, kind, proto)
    except OSError:
      continue  # no such protocol on this host (IPv6 turned off)
    with sock:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      if family == socket.AF_INET6 and host in ("::", ""):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, as [::]
      try:
        sock.bind(address)
      except OSError as err:
        if err.errno == errno.EADDRINUSE:
          return "the port is in use (by another program, or another run's coordinator)"
        if err.errno == errno.EACCES:
          return f"permission denied ({err.strerror}: ports below 1024 need privileges)"
        continue
      return None
  return None
