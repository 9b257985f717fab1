"""The machine a program runs on, as far as its floating-point results depend
on it.

XLA compiles a program for the devices it is given: their kind and number, the
installed jax/jaxlib, ``XLA_FLAGS`` and, on CPU, the instruction set and the
number of cores the process may use (the threads it splits work over, and with
them the order of partial sums). The same run on another such machine rounds
differently, and the two drift apart as training goes on: measured, a 2-epoch
digits run (``experiments/configs/digits.py``) with one usable core instead of
two ended at train loss 0.27684329 instead of 0.27682400. :func:`numerics`
records what tells them apart (``rldjax.train.workdir.check_machine``
compares it between the sessions of a run); :func:`cpu_name` names the CPU
(also in the benchmarks' figures).
"""
from __future__ import annotations

import os
import platform


def cpu_info() -> dict:
  """The first value of each field of ``/proc/cpuinfo`` (empty where absent)."""
  fields = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if ":" in line:
          key, value = (part.strip() for part in line.split(":", 1))
          fields.setdefault(key, value)
  except OSError:
    pass
  return fields


def cpu_model(info: dict) -> str:
  """E.g. ``AMD EPYC 7B13 (family 25 model 1)``, from :func:`cpu_info`'s fields."""
  name = info.get("model name") or platform.processor() or platform.machine()
  if "cpu family" in info and "model" in info:
    name += f" (family {info['cpu family']} model {info['model']})"
  return name


def vector_isa(info: dict) -> str:
  """The widest x86 vector instruction set in :func:`cpu_info`'s flags."""
  flags = set(info.get("flags", "").split())
  if not flags:
    return "instruction set unknown"
  return "AVX-512" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags
                                              else "no AVX2")


def cpu_name() -> str:
  """E.g. ``AMD EPYC 7B13 (family 25 model 1), AVX2, no AVX-512``."""
  info = cpu_info()
  return f"{cpu_model(info)}, {vector_isa(info)}"


def usable_cpus() -> int:
  """The cores this process may run on (its affinity; ``os.cpu_count()``
  where that is unknown)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def numerics(devices) -> dict:
  """What XLA's results depend on besides the program, for ``devices`` (the
  run's, all processes'); on CPU, of this process's host."""
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  first = devices[0]
  out = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "platform": first.platform,
         "device kind": first.device_kind, "devices": len(devices),
         "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
  if first.platform == "cpu":
    out.update({"cpu": cpu_name(), "usable cores": usable_cpus()})
  return out
