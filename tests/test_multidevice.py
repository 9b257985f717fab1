"""8 simulated CPU devices, in a subprocess (the device count is fixed when
JAX starts): two sharded steps equal two single-device steps, in float64 to
1e-12 (multidevice_check.py says why not in float32)."""
import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sharded_step_equals_single_device():
  """rld and ldrld in one subprocess (one JAX start-up, one initialisation)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "multidevice_check.py"), "rld",
                        "ldrld"], env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  for method in ("rld", "ldrld"):
    assert f"MULTIDEVICE OK {method} " in out.stdout
  assert "EVALUATION OK" in out.stdout
