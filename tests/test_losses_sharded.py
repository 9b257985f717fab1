"""The losses on logits sharded over an 8-device mesh of Explicit axes, in a
subprocess (the device count is fixed when JAX starts): values and gradients
equal one device's, and keep the logits' shardings; so does
rldjax.train.objective (sharded_losses_check.py)."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_losses_on_explicitly_sharded_logits_equal_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_losses_check.py")],
                       env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  every = ("kd", "dkd", "rld", "ldrld", "swap_kd", "rc", "label_revision", "chunked(rld)",
           "chunked(ldrld)")
  for layout, names in (("batch+vocab", every),
                        ("axis1", ("rld", "label_revision", "chunked(ldrld)"))):
    for name in names:
      assert f"SHARDED OK {name} {layout}\n" in out.stdout
  for method in ("vanilla", "rld"):
    assert f"SHARDED OK objective({method})\n" in out.stdout
