"""The benchmark scripts run and print their figures (tiny sizes: these check
that the scripts work, not how fast anything is; speed is measured by running
them, BENCHMARKS.md). ``train_step.py --method=ldrld`` once timed rldjax's
step and then failed for want of a PyTorch LDRLD step."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMBER = r"\d+\.\d+"


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_loss_benchmark_prints_every_loss_and_its_ratio_to_kd():
  out = _run("benchmarks/losses.py", "--sizes=16x20", "--reps=1")
  for name in ("kd", "dkd", "rld", "ldrld", "swap_kd", "rc", "label_revision", "kd (optax)",
               "ldrld (naive loop)"):
    assert re.search(rf"16x20 +{re.escape(name)} +{NUMBER} +{NUMBER}\n", out), (name, out)
  assert re.search(rf"16x20 +kd +{NUMBER} +1\.00\n", out)


@pytest.mark.parametrize("memory_only", [False, True])
def test_chunked_loss_benchmark_prints_memory_and_time(memory_only):
  out = _run("benchmarks/losses.py", "--chunked=4", "--sizes=24x30", "--reps=1",
             *(["--memory_only"] if memory_only else []))
  columns = 3 if memory_only else 6
  for name in ("kd", "dkd", "rld", "ldrld"):
    assert re.search(rf"24x30 +float32 +{name} +4( +{NUMBER}){{{columns}}}\n", out), (name, out)


def test_train_step_benchmark_times_the_ldrld_step_against_pytorch():
  pytest.importorskip("torch", reason="the torch extra is not installed")
  out = _run("benchmarks/train_step.py", "--method=ldrld", "--batch=4", "--reps=1")
  assert "method=ldrld" in out
  assert re.search(rf"torch step +{NUMBER} ms +{NUMBER} img/s", out), out
  assert re.search(rf"rldjax step / torch step throughput ratio: {NUMBER}", out), out


def test_input_pipeline_benchmark_prints_speed_memory_and_resume(tmp_path):
  out = _run("benchmarks/input_pipeline.py", "--dataset=rldjax_jpeg_images/small",
             f"--data_dir={tmp_path}", "--rounds=1", "--batch=8", "--image_size=32",
             "--shuffle_buffer=16", "--host_threads=1")
  assert "6 steps per epoch, medians of 1 (host_threads 1)" in out, out
  assert re.search(rf"epoch: {NUMBER} images/s; peak resident memory \d+ MB\n", out), out
  assert re.search(rf"first batch: at step 0 {NUMBER} s; resumed at step 4 {NUMBER} s "
                   rf"\({NUMBER}x\)\n", out), out
