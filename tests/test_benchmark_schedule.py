"""benchmarks/schedule.py: the launcher's loop on synthetic data, timed, as a
command; and the synthetic data it runs on (rldjax.data.synthetic)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import digits
from rldjax import errors
from rldjax.data import synthetic
from rldjax.train import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_synthetic_splits_have_the_data_shapes_and_depend_only_on_the_name():
  (train, evaluation) = synthetic.splits("synthetic:100,30", "cifar", 32, 100)
  assert train[0].shape == (100, 32, 32, 3) and train[0].dtype == np.uint8
  assert evaluation[0].shape == (30, 32, 32, 3) and evaluation[1].dtype == np.int32
  assert 0 <= train[1].min() and train[1].max() < 100 and len(np.unique(train[1])) > 50
  again = synthetic.splits("synthetic:100,30", "cifar", 32, 100)
  assert np.array_equal(again[0][0], train[0]) and np.array_equal(again[1][1], evaluation[1])
  gray = synthetic.splits("synthetic:5,5", "digits", 8, 10)[0][0]
  assert gray.shape == (5, 8, 8, 1)


@pytest.mark.parametrize("name, kind, field", [
    ("synthetic:100", "cifar", "config.dataset.name"),
    ("synthetic:100,0", "cifar", "config.dataset.name"),
    ("synthetic:a,b", "cifar", "config.dataset.name"),
    ("synthetic:1,2,3", "cifar", "config.dataset.name"),
    ("synthetic:100,10", "imagenet", "config.dataset.kind"),
])
def test_malformed_synthetic_data_is_refused_naming_the_field(name, kind, field):
  config = digits.get_config("method=vanilla")
  config.dataset.name, config.dataset.kind = name, kind
  config.dataset.in_memory = kind != "imagenet"
  with pytest.raises(errors.ConfigError, match=f"^{field}: "):
    config_lib.validate(config)


# Modules an accelerator machine may lack (TensorFlow's wheels alone are larger
# than what one can carry to it): the synthetic-data benchmarks must not import them.
NOT_NEEDED = ("tensorflow", "tensorflow_datasets", "clu")


def without_modules(directory, names):
  """A directory that, put first on PYTHONPATH, makes ``import name`` fail as
  if the package were not installed."""
  directory.mkdir()
  for name in names:
    (directory / f"{name}.py").write_text(
        f"raise ImportError('{name} is not installed (shadowed by the test)')\n")
  return str(directory)


def test_schedule_benchmark_runs_the_loop_and_projects_the_schedule(tmp_path):
  workdir = tmp_path / "bench"
  proc = subprocess.run(
      [sys.executable, "benchmarks/schedule.py", "--config=experiments/configs/digits.py:"
       "method=rld,epochs=7", "--examples=300,50", "--epochs=2", "--steps_per_call=2", "--json",
       f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=without_modules(tmp_path / "shadow", NOT_NEEDED)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  assert figures["epochs_run"] == 2 and figures["schedule_epochs"] == 7
  assert figures["steps_per_call"] == 2 and figures["teacher"] == "digits/resnet14"
  results = json.loads((workdir / "run" / "results.json").read_text())
  assert results["status"] == "stopped" and results["epochs_completed"] == 2
  assert results["config"]["dataset"]["name"] == "synthetic:300,50"
  assert [h["step"] for h in results["history"]] == [4, 8]  # 300 // 64 whole batches
  assert figures["images_per_s_in_steps"] == pytest.approx(8 * 64 / results["train_time_s"])
  assert 0 < figures["share_in_steps"] <= 1
  assert figures["projected_schedule_s"] == pytest.approx(
      results["compile_time_s"] + 7 * (results["wall_time_s"] - results["compile_time_s"]) / 2)
  assert "projected 7-epoch schedule of 300,50 examples" in proc.stdout
  again = subprocess.run([sys.executable, "benchmarks/schedule.py", f"--workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert again.returncode == 2 and "error: --workdir: " in again.stderr  # never resumed
  assert "already holds a run" in again.stderr and "Traceback" not in again.stderr


def test_benchmarks_end_like_the_launcher_on_a_run_they_cannot_make(tmp_path):
  """A run the benchmark cannot make ends with ``error: <message>`` and the
  launcher's exit status, not a traceback (experiments/exit_status.py)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  small = subprocess.run(
      [sys.executable, "benchmarks/schedule.py", "--config=experiments/configs/digits.py:"
       "method=vanilla", "--examples=12,10", "--epochs=1", f"--workdir={tmp_path / 'small'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert small.returncode == 2, small.stderr[-3000:]
  assert "error: config.batch_size: 64 exceeds the training split (12 examples)" in small.stderr
  assert "Traceback" not in small.stderr
  empty = subprocess.run([sys.executable, "benchmarks/schedule.py", "--workdir="], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
  assert empty.returncode == 2, empty.stderr[-3000:]
  assert "error: --workdir: empty (an unset shell variable?)" in empty.stderr, empty.stderr
  pair = subprocess.run(
      [sys.executable, "benchmarks/train_step.py", "--pair=res32x4_res9x4", "--no_torch"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert pair.returncode == 2, pair.stderr[-3000:]
  assert "error: config string pair='res32x4_res9x4': one of res56_res20," in pair.stderr
  assert "Traceback" not in pair.stderr
