"""rldjax.coordinator: explicit multi-process settings JAX cannot start with
stop with a ConfigError naming the flag (the launcher's status 2; a port in
use is tested end to end in test_multiprocess.py)."""
import contextlib
import socket
import time

import pytest

from rldjax import coordinator
from rldjax.errors import ConfigError


@contextlib.contextmanager
def listening(host="127.0.0.1"):
  """A socket listening on a free port of ``host``; yields the port."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  with socket.socket(family) as sock:
    sock.bind((host, 0))
    sock.listen()
    yield sock.getsockname()[1]


def free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.mark.parametrize("address, expected", [
    ("10.0.0.2:1234", ("10.0.0.2", 1234)),
    ("node-0.cluster:65535", ("node-0.cluster", 65535)),
    ("[::1]:8476", ("::1", 8476)),
])
def test_addresses_split_into_host_and_port(address, expected):
  assert coordinator.split_address(address, "--coordinator_address") == expected


@pytest.mark.parametrize("address", ["localhost", "localhost:", "host:0", "host:65536",
                                     "host:http", "[::1]"])
def test_an_address_without_a_usable_port_names_the_flag(address):
  with pytest.raises(ConfigError) as raised:
    coordinator.check_settings(address, 2, 1)
  assert str(raised.value) == (f"--coordinator_address={address}: need HOST:PORT with a port "
                               "from 1 to 65535 (process 0's host, and a free port there)")


@pytest.mark.parametrize("num_processes, process_id, message", [
    (0, 0, "--num_processes=0: need at least 1 process"),
    (2, 2, "--process_id=2: need 0 to 1 with --num_processes=2 (each process its own)"),
    (2, -1, "--process_id=-1: need 0 to 1 with --num_processes=2"),
    (True, 0, "--num_processes: need a whole number, got True"),
    (2, 1.0, "--process_id: need a whole number, got 1.0"),
])
def test_process_counts_out_of_range_name_the_flag(num_processes, process_id, message):
  with pytest.raises(ConfigError) as raised:
    coordinator.check_settings(f"127.0.0.1:{free_port()}", num_processes, process_id)
  assert str(raised.value).startswith(message)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1"])
def test_process_0_refuses_a_port_in_use_and_the_others_do_not_check_it(host):
  with contextlib.ExitStack() as stack:
    try:
      port = stack.enter_context(listening(host))
    except OSError:
      pytest.skip(f"this host cannot listen on {host}")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with pytest.raises(ConfigError) as raised:
      coordinator.check_settings(address, 2, 0)
    assert str(raised.value) == (
        f"--coordinator_address={address}: process 0 cannot start the coordinator on port "
        f"{port} of this host: the port is in use (by another program, or another run's "
        "coordinator). Give every process another --coordinator_address port (one no other "
        "program or run on this host uses), or stop what holds it")
    coordinator.check_settings(address, 2, 1)  # process 1 connects to it: nothing to check


def test_a_free_port_and_one_left_in_time_wait_are_accepted():
  coordinator.check_settings(f"127.0.0.1:{free_port()}", 2, 0)
  # A run's coordinator that closed its connections first leaves its port in
  # TIME_WAIT; the next run on the same port must start.
  with socket.socket() as server:
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()
  time.sleep(0.1)
  client.close()
  coordinator.check_settings(f"127.0.0.1:{port}", 2, 0)


def test_jax_s_bind_address_variable_is_the_address_checked(monkeypatch):
  with listening() as port:
    monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=(
        rf"^\$JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:{port}: process 0 cannot start the "
        rf"coordinator on port {port} of this host: the port is in use")):
      coordinator.check_settings(f"127.0.0.1:{free_port()}", 2, 0)
    monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", "127.0.0.1")
    with pytest.raises(ConfigError, match=r"^\$JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1: need"):
      coordinator.check_settings(f"127.0.0.1:{free_port()}", 2, 0)


def test_a_host_without_ipv6_is_checked_on_ipv4(monkeypatch):
  """Where IPv6 is off (no AF_INET6 sockets), the service binds 0.0.0.0: the
  port is checked there."""
  real_socket = socket.socket

  def no_ipv6(family=socket.AF_INET, *args, **kwargs):
    if family == socket.AF_INET6:
      raise OSError(97, "Address family not supported by protocol")
    return real_socket(family, *args, **kwargs)

  with listening("0.0.0.0") as port:
    monkeypatch.setattr(socket, "socket", no_ipv6)
    with pytest.raises(ConfigError, match="the port is in use"):
      coordinator.check_settings(f"10.0.0.1:{port}", 2, 0)
    monkeypatch.undo()
  coordinator.check_settings(f"10.0.0.1:{free_port()}", 2, 0)


@pytest.mark.parametrize("timeouts, message", [
    ({"timeout_seconds": 0}, "--initialization_timeout: need a whole number of seconds >= 1, got 0"),
    ({"timeout_seconds": 2.5}, "--initialization_timeout: need a whole number of seconds >= 1, "
                               "got 2.5"),
    ({"heartbeat_timeout_seconds": 0}, "--heartbeat_timeout: need a whole number of seconds >= 1, "
                                       "got 0"),
    ({"heartbeat_timeout_seconds": True}, "--heartbeat_timeout: need a whole number of seconds "
                                          ">= 1, got True"),
])
def test_timeouts_out_of_range_name_the_flag_before_jax_starts(timeouts, message):
  from rldjax import distributed  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError) as err:
    distributed.initialize(f"127.0.0.1:{free_port()}", 2, 0, **timeouts)
  assert str(err.value) == message
  import jax  # pylint: disable=import-outside-toplevel
  assert not jax.distributed.is_initialized()
