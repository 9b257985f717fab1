"""A run's ``results.json``: the summary ``train_and_evaluate`` rewrites as the
run goes (its status, best and last top-1, times, the per-epoch history and
the config), and what a resumed session reads back from it.

The history holds one record per epoch; the evaluated ones carry ``top1`` and
``top5``. ``best_record`` is the first of the highest top-1, the epoch
``export/best`` was taken from. ``wall_time_s``, ``train_time_s`` (time in
steps) and ``compile_time_s`` add up over the sessions of a resumed run; where
a damaged results.json was set aside, the earlier sessions' times are lost and
the summary says ``"times_incomplete": true``.
"""
from __future__ import annotations

import json
import os

from absl import logging

from rldjax import distributed
from rldjax.train import workdir as workdir_lib

FILE = "results.json"


def epochs_done(workdir) -> int:
  """The epochs the results.json in ``workdir`` records as completed (0 without one)."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return int(json.load(f).get("epochs_completed") or 0)


def previous_times(workdir) -> tuple[float, float, float]:
  """(wall, train, compile) seconds of the earlier sessions of this run."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return 0.0, 0.0, 0.0
  with open(path) as f:
    r = json.load(f)
  return tuple(float(r.get(k) or 0.0) for k in ("wall_time_s", "train_time_s",
                                                 "compile_time_s"))


def times_incomplete(workdir) -> bool:
  """Whether a damaged results.json was set aside: the times of the sessions
  before it are lost."""
  return os.path.exists(os.path.join(workdir, FILE + workdir_lib.UNREADABLE_SUFFIX))


def set_aside_unreadable(workdir) -> None:
  """Moves an unreadable results.json out of the way, with a warning."""
  moved = workdir_lib.set_aside_unreadable(os.path.join(workdir, FILE))
  if moved:
    logging.warning("results.json in %s could not be read: moved to %s. It is rewritten from "
                    "the checkpoints; the times of the sessions before this one are lost "
                    "(results.json says \"times_incomplete\": true).", workdir, moved)


def evaluated_records(history: list) -> list:
  """The history records of the evaluated epochs (those with ``top1``)."""
  return [h for h in history if "top1" in h]


def best_record(history: list) -> dict | None:
  """The first evaluated record with the highest top-1, or None."""
  return max(evaluated_records(history), key=lambda h: h["top1"], default=None)


def summary(workdir, config, history, status, wall, train_time, compile_time, extra=None) -> dict:
  """The results.json of a run of ``config`` in ``workdir`` with this
  ``history`` and ``status``; ``extra`` adds keys (an error, a step)."""
  best = best_record(history)
  last = (evaluated_records(history) or [None])[-1]
  out = {
      "method": config.method, "student": config.student.tag,
      "teacher": config.teacher.tag if config.method != "vanilla" else None,
      "dataset": config.dataset.name, "train_split": config.dataset.train_split,
      "eval_split": config.dataset.eval_split, "seed": config.seed,
      "status": status, "finished": status == "finished",
      "epochs_completed": len(history), "num_epochs": config.num_epochs,
      "best_top1": best and best["top1"], "best_top5": best and best["top5"],
      "best_epoch": best and best["epoch"],
      "last_top1": last and last["top1"], "last_top5": last and last["top5"],
      "wall_time_s": wall, "train_time_s": train_time, "compile_time_s": compile_time,
      **({"times_incomplete": True} if times_incomplete(workdir) else {}),
      "history": history,
      "config": config.to_dict(), "workdir": workdir,
  }
  out.update(extra or {})
  return out


def record_failure(workdir, status, message):
  """Best effort: results.json says ``status`` and ``error``, so that nothing
  reading it takes the run for a running one (this write may fail too)."""
  path = os.path.join(workdir, FILE)
  if not distributed.is_primary() or not os.path.exists(path):  # none yet: nothing to mislead
    return
  try:
    with open(path) as f:
      results = json.load(f)
    results.update(status=status, finished=False, error=message)
    workdir_lib.write_json(path, results)
  except (OSError, ValueError) as err:
    logging.warning("could not record the failure in %s: %s", path, err)
