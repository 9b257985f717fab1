"""Process-level settings that the project applies where it owns the process
(the launcher, the demo, the benchmarks), never on import:

* :func:`use_compilation_cache`: JAX's persistent compilation cache, so a
  rerun, a resumed run and every run of the demo reuse compiled programs.
  Default directory ``$RLDJAX_CACHE_DIR`` or ``~/.cache/rldjax/jax``; one
  that cannot be written leaves the cache off, with a warning. Its entries
  are written whole or not at all, and a damaged one is replaced
  (:func:`_write_entries_whole`).
* :func:`set_cpu_flags`: XLA:CPU flags chosen by measurement
  (``benchmarks/train_step.py``; figures in BENCHMARKS.md). Flags are
  version-specific and an unknown one aborts the process, so each is set only
  when this jaxlib knows it, and only before the backend starts.
* :func:`import_tensorflow_without_keras`: TensorFlow's import without the
  Keras import its ``__init__`` does eagerly (TF 2.21), which no part of
  rldjax uses: ~1.8 s of CPU less in every launch whose data path imports
  TensorFlow (TFDS datasets, the streaming path).
* :func:`freeze_heap`: between runs of one long-lived process (the demo runs
  ~60), moves the live objects out of the garbage collector's reach, so that a
  full collection inside a later run scans only that run's objects (one took
  0.55 s of a 1.4 s demo run when the whole heap was scanned).
* :func:`reexec_with_huge_pages`: restarts the process once with glibc's
  ``glibc.malloc.hugetlb=1`` tunable where the kernel gives transparent huge
  pages only to memory that asks for them (THP mode ``madvise``, the default
  of Debian and Ubuntu). XLA:CPU allocates a step's temporary buffers afresh
  on every call (39-320 MB blocks that glibc maps and unmaps each time), so
  with 4 KiB pages a res32x4 -> res8x4 CIFAR step took ~80,000 page faults;
  with huge pages 1,700-4,900, and the step ran 1.02-1.08x faster
  (``benchmarks/train_step.py --compare_huge_pages``, BENCHMARKS.md).
  With ``hold_sigint`` (the launcher and the demo), SIGINT stays blocked
  across the restart until the new process calls
  :func:`release_held_sigint`, so a Ctrl-C meanwhile reaches the handler it
  installs first (``experiments/start_up.py``).
"""
from __future__ import annotations

import gc
import importlib.abc
import importlib.util
import mmap
import os
import re
import signal
import sys
import threading
import time

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


def use_compilation_cache(directory: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache in ``directory``; returns it.

  The cache only saves time: where the directory cannot be created or
  written (a read-only home on a cluster), this warns, leaves the cache off
  and returns None, and the run goes on compiling its programs.
  """
  import jax  # pylint: disable=import-outside-toplevel
  directory = directory or default_cache_dir()
  try:
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
      raise PermissionError(f"no write permission in {directory}")
  except OSError as err:
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.warning("compilation cache off: cannot use %s (%s). Programs are compiled anew; "
                    "pass --compilation_cache=DIR (or set RLDJAX_CACHE_DIR) to a writable "
                    "directory, or --compilation_cache=none.", directory, err)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _write_entries_whole(directory)
  return directory


def _write_entries_whole(directory: str) -> bool:
  """Gives JAX's file cache in ``directory`` a ``put`` that writes each entry
  to a temporary file and renames it into place, replacing what is there.

  JAX's own ``put`` writes the entry's file in place and skips a key whose
  file exists. A write cut short (a full disk, a process killed while
  writing) left a truncated entry that no later run replaced: each run
  failed to read it (JAX warns ``Error reading persistent compilation cache
  entry ... truncated stream``), compiled that program again and kept the
  damaged file, for good. Now the damaged entry is read once, compiled, and
  replaced whole; a reader never sees a half-written file. A process killed
  while writing leaves its temporary file; those more than
  :data:`STALE_TEMPORARY_SECONDS` old are removed here (a write takes well
  under a second, and another host sharing the directory may be writing one
  now).

  This reaches into JAX's private ``jax._src.compilation_cache`` (there is
  no public hook); where that is not as expected (another JAX version), or
  for what JAX's cache does differently (a size limit, with its own locking
  and eviction; a remote path; ``jax_compilation_cache_check_contents``),
  JAX's cache is left as it is and this returns False. ``tests/test_runtime.py`` checks that it is in place with
  the installed JAX.
  """
  try:
    import jax  # pylint: disable=import-outside-toplevel
    from jax._src import compilation_cache, lru_cache  # pylint: disable=import-outside-toplevel
    base, suffix = lru_cache.LRUCache, lru_cache._CACHE_SUFFIX  # pylint: disable=protected-access
    reset = compilation_cache.reset_cache
    if not hasattr(compilation_cache, "_cache") or not hasattr(compilation_cache,
                                                               "_cache_initialized"):
      return False
  except (ImportError, AttributeError):
    return False
  if (jax.config.jax_compilation_cache_max_size != -1 or "://" in directory
      or jax.config.jax_compilation_cache_check_contents):
    return False

  class WholeEntryFileCache(base):
    """JAX's file cache, each entry written whole (see above)."""

    def put(self, key: str, value: bytes) -> None:
      if not key:
        raise ValueError("key cannot be empty")
      path = os.path.join(directory, key + suffix)
      temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
      try:
        with open(temporary, "wb") as f:
          f.write(value)
        os.replace(temporary, path)
      except BaseException:
        try:
          os.remove(temporary)
        except OSError:
          pass
        raise

  if compilation_cache._cache is not None or getattr(compilation_cache, "_cache_checked", True):  # pylint: disable=protected-access
    reset()  # a cache opened earlier in this process (it logs a line; not needed otherwise)
  compilation_cache._cache = WholeEntryFileCache(directory, max_size=-1)  # pylint: disable=protected-access
  compilation_cache._cache_initialized = True  # pylint: disable=protected-access
  _remove_stale_temporaries(directory, suffix)
  return True


STALE_TEMPORARY_SECONDS = 3600.0


def _remove_stale_temporaries(directory: str, suffix: str) -> None:
  """Removes the temporary files of :func:`_write_entries_whole` in
  ``directory`` last written more than :data:`STALE_TEMPORARY_SECONDS` ago
  (left by a process killed while writing an entry)."""
  pattern = re.compile(rf".+{re.escape(suffix)}\.\d+\.\d+\.tmp")
  now = time.time()
  try:
    names = os.listdir(directory)
  except OSError:
    return
  for name in names:
    if not pattern.fullmatch(name):
      continue
    path = os.path.join(directory, name)
    try:
      if now - os.stat(path).st_mtime > STALE_TEMPORARY_SECONDS:
        os.remove(path)
    except OSError:  # removed meanwhile, or not ours to remove
      pass


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


# TensorFlow's __init__ ends with an import of ``keras.src.optimizers`` (with
# this variable true, of ``tf_keras.src.optimizers``, passed over when absent).
_LEGACY_KERAS = "TF_USE_LEGACY_KERAS"


class _TensorFlowWithoutKeras(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` as the other finders do, and runs its
  ``__init__`` with ``TF_USE_LEGACY_KERAS=1``, removed again after; then
  leaves ``sys.meta_path``. (``importlib.util.find_spec("tensorflow")``,
  which etils calls before any import, gets the same spec and runs
  nothing.)"""

  _finding = False

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name != "tensorflow" or self._finding:
      return None
    self._finding = True
    try:
      spec = importlib.util.find_spec(name)  # from the other finders
    finally:
      self._finding = False
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module  # this spec's own loader object

    def exec_without_keras(module):
      if self in sys.meta_path:
        sys.meta_path.remove(self)
      if _LEGACY_KERAS in os.environ:  # set since: the user's choice
        return exec_module(module)
      os.environ[_LEGACY_KERAS] = "1"
      try:
        return exec_module(module)
      finally:
        os.environ.pop(_LEGACY_KERAS, None)

    spec.loader.exec_module = exec_without_keras
    return spec


def import_tensorflow_without_keras() -> bool:
  """Makes this process's first import of TensorFlow (whenever it comes, if
  it comes: the in-memory digits path never imports it) skip the Keras
  import at the end of TensorFlow's ``__init__``. That import is there so
  that Keras' optimizers register with SavedModel; rldjax saves no
  SavedModel and uses no Keras. Returns whether it will skip it: not when
  TensorFlow is already imported, the user set ``TF_USE_LEGACY_KERAS``, or
  ``tf_keras`` is installed (then that would be imported instead).

  ``TF_USE_LEGACY_KERAS=1`` is set while TensorFlow's ``__init__`` runs, and
  only then: it tries ``tf_keras``, which is absent, and moves on.
  ``tf.keras`` and ``import tensorflow.keras`` still give Keras 3 on first use
  (``tests/test_runtime.py``). Measured with ``/usr/bin/time`` on the
  launcher's imports (``experiments.train``, the input pipeline and the
  loop), 3 runs each, interleaved: 6.4-6.8 s of CPU with the Keras import,
  4.6-4.8 s without. A whole 2-epoch streaming launch (``tests/
  test_multiprocess.py``'s image folder, one process, compiled programs
  cached), 4 runs each, interleaved: 15.6-16.1 s of CPU before, 11.2-14.2 s.
  """
  if ("tensorflow" in sys.modules or _LEGACY_KERAS in os.environ
      or importlib.util.find_spec("tf_keras") is not None):
    return False
  if not any(isinstance(f, _TensorFlowWithoutKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _TensorFlowWithoutKeras())
  return True


def freeze_heap() -> None:
  """Collects garbage, then moves every object still alive to the collector's
  permanent generation (``gc.freeze``): later collections skip them. For a
  process that runs many runs one after the other, called between runs."""
  gc.collect()
  gc.freeze()


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode (``always``, ``madvise`` or
  ``never``: the bracketed word of ``path``), or None where there is none."""
  try:
    with open(path, encoding="ascii") as f:
      found = re.search(r"\[(\w+)\]", f.read())
  except OSError:
    return None
  return found.group(1) if found else None


def _glibc_version() -> tuple[int, int] | None:
  try:
    found = re.fullmatch(r"glibc (\d+)\.(\d+).*", os.confstr("CS_GNU_LIBC_VERSION") or "")
  except (ValueError, OSError, AttributeError):
    return None
  return (int(found.group(1)), int(found.group(2))) if found else None


_DETECT = object()


def huge_pages_environment(environ=None, thp_mode=_DETECT, glibc=_DETECT) -> dict | None:
  """The environment to restart the process with so that glibc's allocator
  asks for transparent huge pages, or None when that would change nothing:
  the THP mode is not ``madvise`` (``always`` gives them already, ``never``
  gives none), glibc is older than 2.35 (no such tunable) or absent, or
  ``GLIBC_TUNABLES`` already says ``glibc.malloc.hugetlb`` (the user's choice
  wins; ``glibc.malloc.hugetlb=0`` opts out). Arguments default to this
  process's environment, the kernel's mode (None: no THP) and glibc's
  ``(major, minor)`` version (None: not glibc)."""
  environ = dict(os.environ if environ is None else environ)
  thp_mode = transparent_huge_pages_mode() if thp_mode is _DETECT else thp_mode
  glibc = _glibc_version() if glibc is _DETECT else glibc
  current = environ.get("GLIBC_TUNABLES", "")
  if thp_mode != "madvise" or glibc is None or glibc < (2, 35) or "glibc.malloc.hugetlb" in current:
    return None
  environ["GLIBC_TUNABLES"] = ":".join(t for t in (current, HUGE_PAGES_TUNABLE) if t)
  return environ


# Set in the environment of a restart that holds SIGINT (reexec_with_huge_pages).
SIGINT_HELD = "RLDJAX_SIGINT_HELD"


def reexec_with_huge_pages(hold_sigint: bool = False) -> None:
  """Replaces this process by the same command (same interpreter, options
  and arguments, same pid) with :func:`huge_pages_environment`, when that is
  not None; otherwise returns. glibc reads its tunables only at start-up,
  hence the restart. Call it first thing in an entry point's
  ``__main__`` block, before any thread, file or lock exists.

  ``hold_sigint``: SIGINT is blocked across the restart (a blocked signal
  stays pending through ``execve``) until the new process calls
  :func:`release_held_sigint`, once it has its handler: a Ctrl-C in between
  reaches that handler instead of Python's start-up. The caller must call
  :func:`release_held_sigint` first thing after the restart."""
  environ = huge_pages_environment()
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  if hold_sigint:
    environ[SIGINT_HELD] = "1"
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], environ)
  finally:  # reached only when execve failed
    if hold_sigint:
      signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def release_held_sigint() -> None:
  """In a process restarted by ``reexec_with_huge_pages(hold_sigint=True)``:
  unblocks SIGINT (a Ctrl-C during the restart is delivered now, to the
  handler installed before this call) and forgets the mark, so that no
  child inherits it. Elsewhere a no-op."""
  if os.environ.pop(SIGINT_HELD, None) is not None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
