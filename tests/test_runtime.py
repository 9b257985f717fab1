"""rldjax.runtime: the project's XLA:CPU flags start JAX (an unregistered flag
aborts the process, and the guard only checks that the name is in jaxlib's
binary, which is necessary, not sufficient: ``xla_cpu_disable_tiled_emitter``
is in the binary's strings yet not a flag), unknown names are skipped, and
flags are never added once the backend is up; TensorFlow imported without
its eager Keras import still gives ``tf.keras``."""
import os
import subprocess
import sys
import textwrap
import time

from rldjax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, **env):
  environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  environment.update(PYTHONPATH=ROOT, **env)
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                        capture_output=True, text=True, timeout=120)


def test_project_flags_start_jax_and_unknown_names_are_skipped():
  out = _run("""
      import os
      from rldjax import runtime
      added = runtime.set_cpu_flags(runtime.CPU_FLAGS + ("--xla_cpu_no_such_flag_rldjax=1",))
      import jax, jax.numpy as jnp
      assert float(jnp.sum(jnp.arange(4.0))) == 6.0
      print("ADDED", added)
      print("FLAGS", os.environ["XLA_FLAGS"])
      """)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "no_such_flag" not in out.stdout
  if runtime._jaxlib_knows(runtime.CPU_FLAGS) == [True] * len(runtime.CPU_FLAGS):  # pylint: disable=protected-access
    for flag in runtime.CPU_FLAGS:
      assert flag in out.stdout


def test_no_flags_after_the_backend_started_and_user_flags_win():
  out = _run("""
      import jax
      jax.devices()
      from rldjax import runtime
      print("ADDED", runtime.set_cpu_flags())
      """)
  assert out.returncode == 0 and "ADDED []" in out.stdout, out.stderr[-2000:]
  name = runtime.CPU_FLAGS[0].split("=", 1)[0]
  out = _run("""
      import os
      from rldjax import runtime
      runtime.set_cpu_flags()
      print("FLAGS", os.environ["XLA_FLAGS"])
      """, XLA_FLAGS=f"{name}=")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.count(name) == 1 and f"{name}= " in out.stdout + " "


def test_tensorflow_imported_without_keras_still_gives_tf_keras():
  out = _run("""
      import os, sys
      from rldjax import runtime
      assert runtime.import_tensorflow_without_keras()
      import importlib.util
      assert importlib.util.find_spec("tensorflow")  # a look before the import (etils')
      import tensorflow_datasets  # imports tensorflow, as the data path does
      import tensorflow as tf
      assert "keras" not in sys.modules, "Keras was imported"
      assert "TF_USE_LEGACY_KERAS" not in os.environ
      assert not runtime.import_tensorflow_without_keras()  # already imported
      from tensorflow.keras import layers  # Keras 3, on first use
      assert tf.keras.layers.Dense is layers.Dense
      print("KERAS", tf.keras.optimizers.SGD.__module__)
      """, TF_CPP_MIN_LOG_LEVEL="3")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "KERAS keras." in out.stdout
  # A user's own TF_USE_LEGACY_KERAS is left to TensorFlow.
  out = _run("""
      import sys
      from rldjax import runtime
      before = list(sys.meta_path)
      print("SKIPS", runtime.import_tensorflow_without_keras(), sys.meta_path == before)
      """, TF_USE_LEGACY_KERAS="0")
  assert out.returncode == 0 and "SKIPS False True" in out.stdout, out.stderr[-2000:]


def test_transparent_huge_pages_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / "enabled"
  for text, mode in (("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                     ("always madvise [never]", "never"), ("garbage", None)):
    path.write_text(text)
    assert runtime.transparent_huge_pages_mode(str(path)) == mode
  assert runtime.transparent_huge_pages_mode(str(tmp_path / "absent")) is None


def test_huge_pages_environment_only_where_it_changes_something():
  env = runtime.huge_pages_environment({"A": "1"}, "madvise", (2, 36))
  assert env == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Other tunables are kept, the huge-page one appended.
  env = runtime.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                       "madvise", (2, 35))
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  # Nothing to do: THP always on or off, a glibc without the tunable, no
  # glibc, or the user already chose (hugetlb=0 opts out).
  assert runtime.huge_pages_environment({}, "always", (2, 36)) is None
  assert runtime.huge_pages_environment({}, "never", (2, 36)) is None
  assert runtime.huge_pages_environment({}, "madvise", (2, 34)) is None
  assert runtime.huge_pages_environment({}, "madvise", None) is None
  assert runtime.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                        "madvise", (2, 36)) is None


def test_reexec_keeps_the_pid_and_arguments_and_happens_once():
  code = """
      import os, sys
      print("PID", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"), flush=True)
      from rldjax import runtime
      runtime.reexec_with_huge_pages()
      print("AFTER", os.getpid(), sys.argv[1:], os.environ.get("GLIBC_TUNABLES"))
      """
  environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  environment.update(PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "x", "--y=1"],
                       env=environment, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  pids = {line.split()[1] for line in lines}
  assert len(pids) == 1, lines  # execve: the same process
  assert all("['x', '--y=1']" in line for line in lines), lines
  if runtime.huge_pages_environment(environment) is None:
    assert [line.split()[0] for line in lines] == ["PID", "AFTER"], lines
  else:  # restarted once, with the tunable
    assert [line.split()[0] for line in lines] == ["PID", "PID", "AFTER"], lines
    assert lines[0].endswith("None")
    assert lines[1].endswith("glibc.malloc.hugetlb=1") and lines[2].endswith("glibc.malloc.hugetlb=1")


def test_a_cache_directory_that_cannot_be_written_leaves_the_cache_off(tmp_path):
  """A read-only home must not stop a run: the cache only saves time."""
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  out = _run(f"""
      import jax
      from rldjax import runtime
      print("GOT", runtime.use_compilation_cache({str(blocker / 'jax')!r}))
      print("DIR", jax.config.jax_compilation_cache_dir)
      print("OK", runtime.use_compilation_cache({str(tmp_path / 'cache')!r}))
      """)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "GOT None" in out.stdout and "DIR None" in out.stdout
  assert f"OK {tmp_path / 'cache'}" in out.stdout
  assert "compilation cache off: cannot use" in out.stderr and "--compilation_cache=DIR" in out.stderr


def test_cache_entries_are_written_whole_and_a_damaged_one_is_replaced(tmp_path):
  """JAX's own file cache wrote an entry in place and never replaced an
  existing one: a write cut short (here files capped at 1 kB, as a full disk
  fails them) left a truncated entry that every later run failed to read,
  compiled again, and kept. Now a failed write leaves no file (nor a
  temporary one), a damaged entry is read once, compiled and replaced, and
  the temporary file of a process killed while writing is removed later."""
  cache = tmp_path / "cache"
  program = f"""
      import resource, sys, warnings, zlib
      if sys.argv[1:] == ["capped"]:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
      import jax, jax.numpy as jnp
      from jax._src import compilation_cache
      from rldjax import runtime
      warnings.simplefilter("always")
      print("DIR", runtime.use_compilation_cache({str(cache)!r}))
      print("WHOLE", type(compilation_cache._cache).__name__)
      x = jnp.linspace(0, 1, 64 * 64).reshape(64, 64)
      print("VALUE", float(jax.jit(lambda x: jnp.sum(jnp.sin(x) @ x.T + jnp.cos(x)))(x)))
      """
  run = lambda *args: subprocess.run(
      [sys.executable, "-c", textwrap.dedent(program), *args], capture_output=True, text=True,
      timeout=120, env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                        "PYTHONPATH": ROOT})
  entries = lambda: sorted(p.name for p in cache.iterdir())

  capped = run("capped")
  assert capped.returncode == 0, capped.stderr[-2000:]
  assert "WHOLE WholeEntryFileCache" in capped.stdout  # in place with this JAX
  assert "Error writing persistent compilation cache entry" in capped.stderr, capped.stderr[-2000:]
  assert not [name for name in entries() if "lambda" in name], entries()  # no part, no temporary

  # What a process killed while writing an entry leaves: removed by the next
  # process once it is over an hour old (a write takes well under a second);
  # a recent one may be another host's write under way, and other files are
  # not the cache's.
  stale, recent, other = (cache / "jit_f-0a1b-cache.4242.139.tmp",
                          cache / "jit_g-2c3d-cache.4343.140.tmp", cache / "notes.tmp")
  for path in (stale, recent, other):
    path.write_bytes(b"part of an entry")
  hours_ago = time.time() - 2 * 3600
  for path in (stale, other):
    os.utime(path, (hours_ago, hours_ago))
  first = run()
  assert first.returncode == 0 and "Error" not in first.stderr, first.stderr[-2000:]
  assert not stale.exists() and recent.exists() and other.exists()
  recent.unlink()
  other.unlink()
  [name] = [name for name in entries() if "lambda" in name]
  whole = (cache / name).read_bytes()
  (cache / name).write_bytes(whole[:len(whole) // 2])  # as a write cut short left it

  damaged = run()
  assert damaged.returncode == 0, damaged.stderr[-2000:]
  assert "Error reading persistent compilation cache entry" in damaged.stderr, damaged.stderr
  assert len((cache / name).read_bytes()) > len(whole) // 2  # replaced (the compile time in it
  again = run()                                               # may differ: not byte for byte)
  assert again.returncode == 0 and "Error" not in again.stderr, again.stderr[-2000:]  # it reads
  values = {out.stdout.split("VALUE")[1] for out in (capped, first, damaged, again)}
  assert len(values) == 1, values
  assert not [name for name in entries() if name.endswith(".tmp")], entries()
