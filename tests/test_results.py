"""rldjax.train.results: the summary a run writes to results.json and what a
resumed session reads back from it (whole runs: tests/test_training.py)."""
import json
import os

import ml_collections

from rldjax.train import config as config_lib
from rldjax.train import results

HISTORY = [
    {"epoch": 1, "loss": 2.0},  # not evaluated (config.eval_last_epochs)
    {"epoch": 2, "loss": 1.5, "top1": 80.0, "top5": 95.0},
    {"epoch": 3, "loss": 1.2, "top1": 90.0, "top5": 99.0},
    {"epoch": 4, "loss": 1.1, "top1": 90.0, "top5": 99.5},  # ties epoch 3
    {"epoch": 5, "loss": 1.0, "top1": 85.0, "top5": 98.0},
]


def _config():
  c = config_lib.base_config()
  c.method = "kd"
  return ml_collections.ConfigDict(c.to_dict())


def test_best_is_the_first_of_the_highest_top1_among_evaluated_epochs():
  assert [h["epoch"] for h in results.evaluated_records(HISTORY)] == [2, 3, 4, 5]
  assert results.best_record(HISTORY)["epoch"] == 3
  assert results.best_record(HISTORY[:1]) is None
  assert results.best_record([]) is None


def test_summary_fields(tmp_path):
  out = results.summary(str(tmp_path), _config(), HISTORY, "finished", 10.0, 8.0, 1.5,
                        {"note": "x"})
  assert (out["best_epoch"], out["best_top1"], out["best_top5"]) == (3, 90.0, 99.0)
  assert (out["last_top1"], out["last_top5"]) == (85.0, 98.0)
  assert out["finished"] and out["status"] == "finished" and out["epochs_completed"] == 5
  assert (out["wall_time_s"], out["train_time_s"], out["compile_time_s"]) == (10.0, 8.0, 1.5)
  assert out["note"] == "x" and "times_incomplete" not in out
  assert out["teacher"] == _config().teacher.tag
  running = results.summary(str(tmp_path), _config(), HISTORY[:1], "running", 1.0, 0.5, 0.0)
  assert not running["finished"] and running["best_top1"] is None and running["last_top1"] is None


def test_a_resumed_session_reads_times_and_epochs_back(tmp_path):
  workdir = str(tmp_path)
  assert results.epochs_done(workdir) == 0
  assert results.previous_times(workdir) == (0.0, 0.0, 0.0)
  summary = results.summary(workdir, _config(), HISTORY, "stopped", 10.0, 8.0, 1.5)
  with open(os.path.join(workdir, results.FILE), "w") as f:
    json.dump(summary, f)
  assert results.epochs_done(workdir) == 5
  assert results.previous_times(workdir) == (10.0, 8.0, 1.5)


def test_an_unreadable_file_is_set_aside_and_the_times_are_marked_incomplete(tmp_path):
  workdir = str(tmp_path)
  path = os.path.join(workdir, results.FILE)
  with open(path, "w") as f:
    f.write('{"status": "runn')  # cut off mid-write
  results.set_aside_unreadable(workdir)
  assert not os.path.exists(path) and results.times_incomplete(workdir)
  out = results.summary(workdir, _config(), HISTORY, "running", 1.0, 1.0, 0.0)
  assert out["times_incomplete"] is True


def test_a_failure_is_recorded_only_over_an_existing_file(tmp_path):
  workdir = str(tmp_path)
  results.record_failure(workdir, "storage_failed", "disk full")
  assert not os.path.exists(os.path.join(workdir, results.FILE))  # nothing to mislead
  with open(os.path.join(workdir, results.FILE), "w") as f:
    json.dump({"status": "running", "finished": False, "epochs_completed": 2}, f)
  results.record_failure(workdir, "storage_failed", "disk full")
  with open(os.path.join(workdir, results.FILE)) as f:
    recorded = json.load(f)
  assert recorded == {"status": "storage_failed", "finished": False, "epochs_completed": 2,
                      "error": "disk full"}
