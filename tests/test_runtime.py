"""rldjax.runtime: the project's XLA:CPU flags start JAX (an unregistered flag
aborts the process, and the guard only checks that the name is in jaxlib's
binary, which is necessary, not sufficient: ``xla_cpu_disable_tiled_emitter``
is in the binary's strings yet not a flag), unknown names are skipped, and
flags are never added once the backend is up."""
import os
import subprocess
import sys
import textwrap

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
