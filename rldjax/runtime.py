"""Process-level settings that the project applies where it owns the process
(the launcher, the demo, the benchmarks), never on import:

* :func:`use_compilation_cache`: JAX's persistent compilation cache, so a
  rerun, a resumed run and every run of the demo reuse compiled programs.
  Default directory ``$RLDJAX_CACHE_DIR`` or ``~/.cache/rldjax/jax``.
* :func:`set_cpu_flags`: XLA:CPU flags chosen by measurement
  (``benchmarks/train_step.py``; figures in BENCHMARKS.md). Flags are
  version-specific and an unknown one aborts the process, so each is set only
  when this jaxlib knows it, and only before the backend starts.
* :func:`freeze_heap`: between runs of one long-lived process (the demo runs
  ~60), moves the live objects out of the garbage collector's reach, so that a
  full collection inside a later run scans only that run's objects (one took
  0.55 s of a 1.4 s demo run when the whole heap was scanned).
"""
from __future__ import annotations

import gc
import mmap
import os

# Measured on the res32x4 -> res8x4 distillation step (BENCHMARKS.md):
# --xla_cpu_experimental_ynn_fusion_type=-individual_convolution: convolutions
#   outside YNNPACK's per-convolution fusions, 1.25-1.3x faster;
# --xla_cpu_enable_concurrency_optimized_scheduler=true: a schedule that lets
#   independent work (the teacher's forward, the student's) overlap, 1.1x more.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
             "--xla_cpu_enable_concurrency_optimized_scheduler=true")


def default_cache_dir() -> str:
  return os.environ.get("RLDJAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "rldjax", "jax")


def use_compilation_cache(directory: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache in ``directory``; returns it."""
  import jax  # pylint: disable=import-outside-toplevel
  directory = directory or default_cache_dir()
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def _jaxlib_knows(flags) -> list[bool]:
  """Whether each flag's name is in the installed jaxlib's library: necessary
  for the flag to exist, not sufficient (``xla_cpu_disable_tiled_emitter`` is
  in the strings, not a flag), so the flags of :data:`CPU_FLAGS` are also
  checked by starting JAX with them (``tests/test_runtime.py``)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.find_spec("jaxlib")
  library = os.path.join(os.path.dirname(spec.origin), "libjax_common.so")
  names = [f.lstrip("-").split("=", 1)[0].encode() for f in flags]
  if not os.path.exists(library):
    return [False] * len(flags)
  with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    return [m.find(name) >= 0 for name in names]


def set_cpu_flags(flags=CPU_FLAGS) -> list[str]:
  """Adds the known ``flags`` to ``XLA_FLAGS`` (before JAX's backend starts;
  a no-op after, and for flags the user already set). Returns those added."""
  import sys  # pylint: disable=import-outside-toplevel
  if "jax" in sys.modules:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    if xla_bridge.backends_are_initialized():
      return []
  current = os.environ.get("XLA_FLAGS", "")
  todo = [f for f in flags if f.split("=", 1)[0] not in current]
  added = [f for f, known in zip(todo, _jaxlib_knows(todo)) if known]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current] + added).strip()
  return added


def freeze_heap() -> None:
  """Collects garbage, then moves every object still alive to the collector's
  permanent generation (``gc.freeze``): later collections skip them. For a
  process that runs many runs one after the other, called between runs."""
  gc.collect()
  gc.freeze()
