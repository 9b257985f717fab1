"""Shared test fixtures: the parity files in ../shared, skipped when absent."""
import fcntl
import json
import os
import pathlib

import numpy as np
import pytest

from rldjax import runtime  # pylint: disable=wrong-import-order

# As the launcher does: the test modules' TensorFlow import skips Keras (~2 s
# of CPU in each pytest worker).
runtime.import_tensorflow_without_keras()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PARITY_DIR = pathlib.Path(os.environ.get("RLDJAX_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))


def absent_reason(path: pathlib.Path) -> str:
  """Why the tests reading the parity file ``path`` are skipped."""
  return (f"parity fixture {path} is absent: these tests need the published PyTorch numbers "
          "in ../shared/parity (or RLDJAX_PARITY_DIR)")


def parity_file(name: str) -> pathlib.Path:
  path = PARITY_DIR / name
  if not path.exists():
    pytest.skip(absent_reason(path))
  return path


def computed_once(tmp_path_factory, name, compute):
  """``compute()``, a dict ``{str: tuple of arrays}``, computed once per test
  session: under ``pytest -n`` by the first worker that asks, holding a lock
  meanwhile (the others wait on it, then read the result back from the
  session's directory; pytest-xdist's documented pattern for expensive
  session data).
  For the parity modules' single large programs (20-50 s each), which
  xdist's load scheduling may hand to both workers."""
  if os.environ.get("PYTEST_XDIST_WORKER") is None:
    return compute()
  shared = tmp_path_factory.getbasetemp().parent  # this session's, shared by its workers
  path = shared / f"{name}.npz"
  with open(shared / f"{name}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
    if not path.exists():
      result = compute()
      flat = {f"{key}#{i}": np.asarray(a) for key, arrays in result.items()
              for i, a in enumerate(arrays)}
      with open(shared / f"{name}.tmp.npz", "wb") as f:
        np.savez(f, **flat)
      os.replace(shared / f"{name}.tmp.npz", path)
      return result
  with np.load(path) as stored:
    result = {}
    for flat_key in stored.files:
      key, i = flat_key.rsplit("#", 1)
      result.setdefault(key, {})[int(i)] = stored[flat_key]
  return {key: tuple(arrays[i] for i in range(len(arrays))) for key, arrays in result.items()}


@pytest.fixture(scope="session")
def losses_npz():
  return np.load(parity_file("losses.npz"))


@pytest.fixture(scope="session")
def losses_index(losses_npz):
  return json.loads(str(losses_npz["index_json"]))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the test session, shared by the
  xdist workers: a program compiled again by a later test, on either worker
  (the same launcher config, the same model), is read back instead. Two
  processes may write one entry at once: each writes a whole file and
  renames it into place (``rldjax.runtime._write_entries_whole``), so a
  reader gets one complete entry or the other. The cache hands back the
  executable XLA compiled for the same program, so the tests still run what
  users run; a clean clone starts with it empty.

  Launchers started by tests (``python -m experiments.train`` and the like)
  read ``$RLDJAX_CACHE_DIR``: it names a directory of this session too
  (their own: they run with the launcher's XLA flags), so no test writes
  into the user's ``~/.cache/rldjax``. Tests that need a cache of their own
  (a cold start, launchers side by side) give their launchers their own
  directory."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER") is not None:
    base = base.parent  # this session's, shared by its workers (as computed_once)
  os.environ["RLDJAX_CACHE_DIR"] = str(base / "jax_cache_launched")
  return runtime.use_compilation_cache(str(base / "jax_cache"))


@pytest.fixture(scope="module")
def less_optimized_compilation():
  """For a module of many small loss programs (used with ``pytestmark``):
  each is compiled with JAX's ``jax_disable_most_optimizations`` (XLA's
  backend optimisation level 0 and LLVM's expensive passes off), which
  computes the same operations with less optimised machine code. Their
  compilation is most of these modules' time: the four loss modules that use
  it, ``pytest -n 2``, took 355 s of CPU compiled as users compile and
  271-284 s so (two runs), every test passing either way. The parity tests,
  the models and the launched runs compile as users do."""
  import jax
  before = jax.config.values["jax_disable_most_optimizations"]  # the user's, if set
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(autouse=True)
def kill_leftovers():
  """Processes a test launched with ``tests.foreground.launch`` end with it:
  those still running (the test failed before they stopped) are killed."""
  yield
  from tests import foreground
  foreground.kill_leftovers()


# The modules whose tests run longest (real launcher processes, a demo, a
# subprocess with 8 devices), measured with ``--durations``: collected first,
# so that none is left for the end of ``pytest -n 2``, where it would run
# alone on one worker. xdist's load scheduling hands each worker a first chunk
# of consecutive tests (a quarter of its share: 113 of 911 tests), so these
# all run on the first worker while the second works through the short tests
# (checked with ``-v --durations=0`` on 76ca5ff: 653 s of tests on each).
LONGEST_FIRST = ("test_multiprocess.py", "test_unattended.py", "test_demo_report.py",
                 "test_multidevice.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
