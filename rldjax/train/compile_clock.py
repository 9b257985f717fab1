"""Time spent compiling, from JAX's own monitoring events.

JAX reports the duration of each stage of building a program (tracing to a
jaxpr, lowering to MLIR, the backend compile or the persistent-cache load) as
``/jax/core/compile/*_duration`` events. :func:`seconds` is their running total
for the calling thread, so a loop can take the compilation out of the time it
attributes to training steps (the first call of a program compiles it
synchronously, inside the call). The listener is registered on first use, not
at import.
"""
from __future__ import annotations

import collections
import threading

import jax

_PREFIX = "/jax/core/compile/"
_totals: collections.Counter = collections.Counter()
_lock = threading.Lock()
_registered = False


def _listen(event: str, duration: float, **_) -> None:
  if event.startswith(_PREFIX) and event.endswith("_duration"):
    with _lock:
      _totals[threading.get_ident()] += duration


def seconds() -> float:
  """Seconds this thread has spent compiling since the first call."""
  global _registered
  with _lock:
    if not _registered:
      jax.monitoring.register_event_duration_secs_listener(_listen)
      _registered = True
    return _totals[threading.get_ident()]
