"""Tables and curves from runs' results.json files.

  python -m experiments.report RUN_DIR [RUN_DIR ...] [--out DIR]

Finds every results.json under the given directories and writes
``report.md`` and ``accuracy.png``:

* Runs are grouped by experiment: the same teacher, student, method, data
  splits and config apart from the seed (and fields that do not change a
  run's result: cadence, data location). Runs of different configs never share
  a cell; a pair with several configs gets one row per config.
* Cells: test top-1 mean ± std over seeds with the seed count (a single run
  shows its value and ``n=1``), at the last epoch and at the best epoch (the
  papers' convention; the best epoch is picked on the evaluation split).
* A method with runs of several configs in one row gets a column per
  config, ``method [n]``, and a legend naming the fields that differ.
* Paired gains over ``vanilla``: per seed (same seed = same initialisation and
  data order), method minus vanilla at the last epoch; mean and a 95% interval
  (Student t, n - 1 degrees of freedom), and whether that interval includes 0.
* Vanilla runs with no distillation run beside them (teachers reported
  alone) get rows of their own, teacher "—".
* Runs that share a cell but read different files (their workdirs'
  ``inputs.json``: the teacher's weights, the splits' checksums, counts or
  dataset version differ) are listed under the tables, naming what differs:
  such a cell mixes teachers or data.
* Tabulated runs that a session resumed on another machine than the one that
  started them (results.json's ``machine_changes``: on CPU other usable
  cores, say; their rounding differed, so they drift apart from an
  uninterrupted run) are listed under the tables with what differed.
* Unfinished runs (their status, epochs and error; a "running" one whose
  ``run.lock`` names a process that no longer runs, or one on another host
  whose heartbeat stopped, is said to have stopped without updating its
  record), and results.json files that cannot be
  read, are listed and left out; the records in a workdir's ``superseded/`` (a launch that
  trained nothing before its config was corrected) are not runs.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os

import numpy as np

from rldjax import run_lock
from rldjax.records import read_json_object

# rldjax.train.workdir.SUPERSEDED_DIR and INPUTS_NAME (not imported: the
# report runs without JAX).
SUPERSEDED_DIR = "superseded"
INPUTS_NAME = "inputs.json"
ORDER = ["vanilla", "kd", "dkd", "rld", "ldrld", "swap_kd", "rc", "label_revision"]
# Config fields that do not change what a run computes.
_IGNORED = ("seed", "checkpoint", "log_every_steps", "steps_per_call", "eval_batch_size",
            "distributed",
            "dataset.data_dir", "dataset.download", "dataset.in_memory", "teacher.checkpoint")
# Fields a method's recipe sets: they may differ between the columns of a row.
_METHOD_FIELDS = ("method", "ce_weight", "distill_weight", "kd_weight", "warmup_epochs", "loss",
                  "optimizer.schedule", "optimizer.lr_warmup_epochs")


def collect(run_dirs):
  """Every run's results.json under ``run_dirs`` (``_path`` added). The records
  of launches a workdir's next config superseded (``superseded/``) are not
  runs; a results.json that cannot be read is kept as
  ``{"_path": ..., "_unreadable": reason}`` (listed, never tabulated)."""
  runs = []
  for d in run_dirs:
    paths = [os.path.join(d, "results.json")] if os.path.isfile(
        os.path.join(d, "results.json")) else sorted(
            glob.glob(os.path.join(d, "**", "results.json"), recursive=True))
    for path in paths:
      if SUPERSEDED_DIR in os.path.relpath(path, d).split(os.sep)[:-1]:
        continue
      try:
        r = read_json_object(path)
      except (OSError, ValueError) as err:
        r = {"_unreadable": f"{type(err).__name__}: {err}"}
      r["_path"] = path
      try:  # what identifies the files the run read (absent before that record)
        r["_inputs"] = read_json_object(os.path.join(os.path.dirname(path), INPUTS_NAME))
      except (OSError, ValueError):
        pass
      runs.append(r)
  return runs


def mixed_inputs(runs) -> list[str]:
  """Lines naming each group of finished runs of one experiment (one cell)
  whose recorded inputs differ: the inputs.json keys recorded by all of its
  runs that hold more than one value, with the runs of each value."""
  groups = collections.defaultdict(list)
  for r in runs:
    if r.get("finished") and "_inputs" in r:
      groups[experiment_key(r)].append(r)
  lines = []
  for members in groups.values():
    shared = set.intersection(*(set(r["_inputs"]) for r in members))
    for key in sorted(shared):
      by_value = collections.defaultdict(list)
      for r in members:
        by_value[json.dumps(r["_inputs"][key])].append(os.path.dirname(r["_path"]))
      if len(by_value) > 1:
        r = members[0]
        name = (f"{r.get('teacher') or '—'} → {r['student']}, {r['method']}")
        lines.append(f"- {name}: {key} differs between its runs: " + "; ".join(
            f"{value} in {', '.join(sorted(dirs))}" for value, dirs in sorted(by_value.items())))
  return sorted(lines)


def moved_runs(runs) -> list[str]:
  """Lines naming each finished run that a session resumed on another
  machine (results.json's ``machine_changes``), with what differed."""
  lines = []
  for r in runs:
    if r.get("finished") and r.get("machine_changes"):
      what = "; ".join(", ".join(changed) for changed in r["machine_changes"])
      lines.append(f"- {os.path.dirname(r['_path'])}: {what}")
  return sorted(lines)


def _flat(d, prefix=""):
  out = {}
  for k, v in (d or {}).items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def experiment_key(run) -> str:
  """The run's config without the seed and the fields that do not change it."""
  flat = _flat(run.get("config"))
  kept = {k: v for k, v in flat.items()
          if not any(k == f or k.startswith(f + ".") for f in _IGNORED)}
  kept.update(method=run["method"], student=run["student"], teacher=run.get("teacher"))
  return json.dumps(kept, sort_keys=True, default=str)


def mean_std(values) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.2f} (n=1)"
  return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n={len(values)})"


def t_quantile(dof: int, q: float = 0.975) -> float:
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return float(stats.t.ppf(q, dof))


def paired_gain(values: dict, baseline: dict) -> dict | None:
  """Per-seed differences (same seeds only): mean, 95% interval, n."""
  seeds = sorted(set(values) & set(baseline))
  if len(seeds) < 2:
    return None
  diff = np.asarray([values[s] - baseline[s] for s in seeds], np.float64)
  half = t_quantile(len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
  return {"mean": float(diff.mean()), "low": float(diff.mean() - half),
          "high": float(diff.mean() + half), "n": len(diff),
          "includes_zero": bool(diff.mean() - half <= 0 <= diff.mean() + half)}


def _row_label(run) -> tuple:
  cfg = _flat(run.get("config"))
  return (run.get("teacher") or "—", run["student"], run.get("dataset", "?"),
          cfg.get("dataset.train_split", "train"), cfg.get("dataset.eval_split", "test"))


def _split_key(key: str) -> tuple[str, str]:
  """(row part, method part) of an experiment key."""
  flat = json.loads(key)
  is_method = lambda k: any(k == f or k.startswith(f + ".") for f in _METHOD_FIELDS)
  row = {k: v for k, v in flat.items() if not is_method(k)}
  method = {k: v for k, v in flat.items() if is_method(k)}
  return json.dumps(row, sort_keys=True), json.dumps(method, sort_keys=True)


def _add_runs(cell, members):
  for r in members:
    cell["best"].append(r["best_top1"])
    cell["last"].append(r["last_top1"])
    cell["seeds"][r["seed"]] = r["last_top1"]


def _variant_legend(columns) -> list:
  """Lines naming, for each ``method [n]`` column, the config fields in
  which its runs differ from the row's other configs of that method."""
  lines = []
  rank = lambda m: ORDER.index(m) if m in ORDER else len(ORDER)
  for (row, method), parts in sorted(columns.items(), key=lambda kv: (kv[0][0], rank(kv[0][1]))):
    if len(parts) < 2:
      continue
    configs = [_flat(json.loads(p)) for p in sorted(parts)]
    keys = sorted({k for c in configs for k in c if len({json.dumps(d.get(k)) for d in configs}) > 1})
    name = f"{row[0]} → {row[1]}" + (f" ({row[5]})" if len(row) > 5 else "") + (
        f", {row[3]} → {row[4]}")
    for i, c in enumerate(configs, start=1):
      lines.append(f"- {name}: {method} [{i}]: "
                   + ", ".join(f"{k} = {c.get(k, '—')}" for k in keys))
  return lines


def build_table(runs):
  """Returns (markdown, cells, gains).

  Rows: distillation setups (teacher, student, data and splits, schedule...);
  columns: methods, one per method config (``kd [2]`` when a row holds kd
  runs of two configs). ``cells[(row, column)] = {"best": [...], "last":
  [...], "seeds": {seed: last}}``. Vanilla runs of the row's student with the
  row's data and schedule are its "vanilla" column; vanilla runs of its
  teacher give the teacher column. Vanilla runs that are neither (teachers
  reported alone, vanilla students without a distillation run) get rows of
  their own, with teacher "—".
  """
  finished = [r for r in runs if r.get("finished")]
  groups = collections.defaultdict(list)
  for r in finished:
    groups[experiment_key(r)].append(r)
  # Rows from the distillation experiments; a vanilla run's row part drops the teacher.
  def row_of(r, key):
    row_part, _ = _split_key(key)
    flat = json.loads(row_part)
    flat.pop("teacher", None)
    flat.pop("teacher.tag", None)
    return json.dumps(flat, sort_keys=True)
  rows, labels = {}, {}
  for key, members in groups.items():
    r = members[0]
    if r["method"] != "vanilla":
      rows.setdefault((_row_label(r), row_of(r, key)), None)
  for i, (label, part) in enumerate(sorted(rows)):
    same_label = [p for (l, p) in rows if l == label]
    labels[(label, part)] = label + ((f"setup {sorted(same_label).index(part) + 1}",)
                                     if len(same_label) > 1 else ())
  columns = collections.defaultdict(list)  # (row, method) -> [method parts]
  cells = collections.defaultdict(lambda: {"best": [], "last": [], "seeds": {}})
  pending = []
  for key, members in groups.items():
    r0 = members[0]
    if r0["method"] == "vanilla":
      continue
    row = labels[(_row_label(r0), row_of(r0, key))]
    _, method_part = _split_key(key)
    if method_part not in columns[(row, r0["method"])]:
      columns[(row, r0["method"])].append(method_part)
    pending.append((row, r0["method"], method_part, members))
  for row, method, part, members in pending:
    variants = sorted(columns[(row, method)])
    column = method if len(variants) == 1 else f"{method} [{variants.index(part) + 1}]"
    _add_runs(cells[(row, column)], members)
  teacher_runs = collections.defaultdict(lambda: {"best": [], "last": []})
  unattached = []  # vanilla groups that are neither a row's vanilla column nor its teacher
  for key, members in groups.items():
    r0 = members[0]
    if r0["method"] != "vanilla":
      continue
    for r in members:
      _, student, dataset, _, evaluation = _row_label(r)
      teacher_runs[(student, dataset, evaluation)]["best"].append(r["best_top1"])
      teacher_runs[(student, dataset, evaluation)]["last"].append(r["last_top1"])
    attached = False
    for (label, part), row in labels.items():
      if label[1:] == _row_label(r0)[1:] and part == row_of(r0, key):
        attached = True
        _add_runs(cells[(row, "vanilla")], members)
    if not attached:
      unattached.append((key, members))
  # Vanilla runs with no distillation row (teachers, or vanilla students alone)
  # get rows of their own, teacher "—", unless they are a shown row's teacher.
  shown_teachers = {(label[0], label[2], label[4]) for label, _ in labels}
  own = collections.defaultdict(list)
  for key, members in unattached:
    label = _row_label(members[0])
    if (label[1], label[2], label[4]) not in shown_teachers:
      own[label].append((row_of(members[0], key), members))
  for label, parts in own.items():
    parts.sort(key=lambda p: p[0])
    for i, (_, members) in enumerate(parts):
      row = label + ((f"setup {i + 1}",) if len(parts) > 1 else ())
      labels[(label, f"vanilla only {i}")] = row
      _add_runs(cells[(row, "vanilla")], members)
  ordered_rows = sorted(set(labels.values()))
  present = {c for (_, c) in cells}
  methods = [c for m in ORDER for c in sorted(present) if c == m or c.startswith(m + " [")]
  gains = {}
  for row in ordered_rows:
    base = cells.get((row, "vanilla"))
    for m in methods:
      if m != "vanilla" and base and (row, m) in cells:
        gains[(row, m)] = paired_gain(cells[(row, m)]["seeds"], base["seeds"])
  lines = []
  if not ordered_rows:
    return "No finished runs: nothing to tabulate.\n", dict(cells), gains
  for which, title in (("last", "last epoch"), ("best", "best epoch (picked on the "
                                                         "evaluation split, as the papers do)")):
    lines.append(f"### Top-1 (%) on the evaluation split, {title}: mean ± std over seeds\n")
    lines.append("| teacher → student | data (train → eval) | teacher | " + " | ".join(methods)
                 + " |")
    lines.append("|---|---|---|" + "---|" * len(methods))
    for row in ordered_rows:
      t_acc = teacher_runs.get((row[0], row[2], row[4]), {}).get(which)
      name = f"{row[0]} → {row[1]}" + (f" ({row[5]})" if len(row) > 5 else "")
      line = [name, f"{row[2]} {row[3]} → {row[4]}", mean_std(t_acc) if t_acc else "—"]
      for m in methods:
        v = cells.get((row, m), {}).get(which)
        line.append(mean_std(v) if v else "—")
      lines.append("| " + " | ".join(line) + " |")
    lines.append("")
  legend = _variant_legend(columns)
  if legend:
    lines.append("Columns `method [n]`: a row holds runs of that method with several configs; "
                 "what differs between them, per row:\n")
    lines.extend(legend)
    lines.append("")
  distilled = [m for m in methods if m != "vanilla"]
  if distilled and not gains:
    lines.append("No paired gain over vanilla: no vanilla student was run with the same "
                 "teacher, student, data and schedule as these methods (run one with the same "
                 "seeds to get it). Without it, the table shows no gain from distillation.\n")
  if gains and all(g is None for g in gains.values()):
    lines.append("No paired gain over vanilla: it needs at least 2 seeds run by both a method "
                 "and vanilla, and these runs share fewer. Without an interval, no difference "
                 "above is shown to exceed the noise between seeds.\n")
  if any(g is not None for g in gains.values()):
    others = [m for m in methods if m != "vanilla"]
    lines.append("### Paired gain over vanilla (last epoch, same seeds): mean [95% interval]\n")
    lines.append("| teacher → student | data | " + " | ".join(others) + " |")
    lines.append("|---|---|" + "---|" * len(others))
    notes = []
    for row in ordered_rows:
      line = [f"{row[0]} → {row[1]}", f"{row[3]} → {row[4]}"]
      for m in others:
        g = gains.get((row, m))
        if g is None:
          line.append("—")
          continue
        line.append(f"{g['mean']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}] (n={g['n']})")
        verdict = ("the interval includes 0: the difference is within noise"
                   if g["includes_zero"] else
                   ("above vanilla beyond noise" if g["low"] > 0 else "below vanilla beyond noise"))
        notes.append(f"- {m}: {verdict}.")
      lines.append("| " + " | ".join(line) + " |")
    lines.append("")
    lines.extend(notes)
    lines.append("")
  return "\n".join(lines), dict(cells), gains


def plot(runs, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  curves = collections.defaultdict(list)
  teachers = {r["teacher"] for r in runs if r.get("teacher")}
  for r in runs:
    if r.get("finished") and r.get("history"):
      if r["method"] != "vanilla":
        label = r["method"]
      elif r["student"] in teachers:
        label = f"teacher ({r['student']})"
      else:
        label = f"vanilla student ({r['student']})"
      cfg = _flat(r.get("config"))
      split = cfg.get("dataset.eval_split", "test")
      # NaN where an epoch was not evaluated (config.eval_last_epochs)
      curves[f"{label}, {split}"].append([h.get("top1", np.nan) for h in r["history"]])
  fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
  for label in sorted(curves):
    n = min(len(c) for c in curves[label])
    values = np.asarray([c[:n] for c in curves[label]])
    epochs = np.arange(1, n + 1)
    ax.plot(epochs, values.mean(0), marker="o", markersize=2, label=f"{label} (n={len(values)})")
    if len(values) > 1:
      ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.15)
  ax.set_xlabel("epoch")
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.set_ylabel("top-1 accuracy on the evaluation split (%)")
  ax.set_title("Accuracy per epoch (mean over seeds; band: min–max)")
  ax.grid(alpha=0.3)
  if curves:
    ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _why_unfinished(r) -> str:
  """`` (...)`` saying where an unfinished run stands: its status, epochs and
  error; a status of "running" is checked against the workdir's lock, since a
  process killed outright (or aborted when a peer stopped) cannot update it."""
  if "_unreadable" in r:
    return f" (unreadable: {r['_unreadable']})"
  status = r.get("status")
  if status is None:  # a record from before results.json had a status
    return ""
  epochs = f"{r.get('epochs_completed', '?')}/{r.get('num_epochs', '?')} epochs"
  if status == "running":
    state = run_lock.lock_holder_state(os.path.dirname(r["_path"]))
    if state.startswith("held"):
      return f" (running, {epochs}: {state})"
    return (f" (status running, {epochs}, but no process runs it ({state}): it stopped without "
            "updating results.json, killed, aborted or cut off; its command resumes it)")
  error = str(r.get("error") or "").strip().splitlines()
  return f" ({status}, {epochs}" + (f": {error[0][:200]}" if error else "") + ")"


def write_report(run_dirs, out_dir, preamble: str = "", plot_runs=None):
  """Writes report.md and accuracy.png; returns (table markdown, cells, gains, unfinished)."""
  runs = collect(run_dirs)
  if not runs:
    raise SystemExit(f"no results.json under {', '.join(run_dirs)}")
  table, cells, gains = build_table(runs)
  unfinished = [r["_path"] + _why_unfinished(r) for r in runs if not r.get("finished")]
  lines = ["# Results\n"]
  if preamble:
    lines += [preamble, ""]
  lines += [table, ""]
  mixed = mixed_inputs(runs)
  if mixed:
    lines.append("## Runs tabulated together that read different files\n")
    lines += mixed + [""]
  moved = moved_runs(runs)
  if moved:
    lines.append("## Runs resumed on another machine than the one that started them\n")
    lines.append("XLA compiles for the machine: their rounding differed from then on, so they "
                 "drift apart from an uninterrupted run. What differed:\n")
    lines += moved + [""]
  if unfinished:
    lines.append("## Unfinished runs (not in the tables)\n")
    lines += [f"- {p}" for p in unfinished]
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot(plot_runs if plot_runs is not None else runs, os.path.join(out_dir, "accuracy.png"))
  return table, cells, gains, unfinished


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__)
  parser.add_argument("run_dirs", nargs="+")
  parser.add_argument("--out", default=None, help="output directory (default: the first RUN_DIR)")
  args = parser.parse_args(argv)
  # A misspelt directory beside others would otherwise leave its runs out of
  # the tables without a word.
  missing = [d for d in args.run_dirs if not os.path.isdir(d)]
  if missing:
    parser.error("not a directory: " + ", ".join(missing))
  out = args.out or args.run_dirs[0]
  try:
    table, _, _, unfinished = write_report(args.run_dirs, out)
  except OSError as err:  # an --out that is a file, or on a full or read-only disk
    parser.exit(1, f"{parser.prog}: error: cannot write the report in {out}: {err}\n")
  print(table)
  runs = collect(args.run_dirs)
  for line in mixed_inputs(runs):
    print(f"different files in one cell: {line[2:]}")
  for line in moved_runs(runs):
    print(f"resumed on another machine: {line[2:]}")
  for p in unfinished:
    print(f"unfinished: {p}")


if __name__ == "__main__":
  main()
