"""The demo pipeline at a tiny size, and the report built from results.json:
cells come from the runs, runs of different configs never share a cell, a
single run shows no spread, paired gains and their intervals are right."""
import json
import math
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from scipy import stats

from experiments import demo, report
from rldjax import errors, run_lock
from rldjax.train import loop
from rldjax.train import workdir as workdir_lib


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", ""])
  proc.wait()
  return proc.pid


def test_demo_writes_report_from_results(tmp_path):
  workdir = tmp_path / "demo"
  workdir.mkdir()  # left by a demo that was killed: its lock is taken over
  (workdir / "run.lock").write_text(json.dumps({"host": socket.gethostname(),
                                                "pid": _dead_pid()}))
  summary = demo.run_demo(str(workdir), seeds=2, teacher_epochs=1, student_epochs=2,
                          methods=["vanilla", "rld"], scales=[1.0, 0.25], selection_seeds=1,
                          parallel_runs=2)
  md = (workdir / "report.md").read_text()
  png = (workdir / "accuracy.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
  runs = {p.parent.name: json.loads(p.read_text()) for p in (workdir / "runs").glob("*/results.json")}
  assert set(runs) == {"vanilla_seed0", "vanilla_seed1", "rld_seed0", "rld_seed1"}
  # The weights were chosen on the validation split, never on the test split.
  chosen = summary["selection"]["rld"]["chosen"]
  assert chosen in (1.0, 0.25)
  for p in (workdir / "selection").glob("*/results.json"):
    r = json.loads(p.read_text())
    assert (r["train_split"], r["eval_split"]) == ("train[:80%]", "train[80%:]")
    assert r["config"]["eval_last_epochs"] == demo.SELECTION_EPOCHS  # what the score reads
    scale = p.parent.name.split("_x")[1].split("_seed")[0]
    assert summary["selection"]["rld"]["scores"][scale] == np.mean(
        [h["top1"] for h in r["history"][-demo.SELECTION_EPOCHS:]])
  assert runs["rld_seed0"]["eval_split"] == "test"
  assert abs(runs["rld_seed0"]["config"]["distill_weight"] - chosen) < 1e-12
  assert "How the distillation weights were chosen" in md and "never on the test split" in md
  # What the score read: 2 epochs (the runs are shorter than the 5 it reads otherwise).
  assert "(top-1 over the last 2 epochs, mean of 1 seed)" in md and "2 seeds per method" in md
  assert "Students train 2 epochs, the teacher 1;" in md
  # Every number in the last-epoch table comes from a results.json.
  row = next(line for line in md.splitlines() if line.startswith("| digits/resnet14 → digits/resnet8"))
  header = md.splitlines()[md.splitlines().index(row) - 2]
  cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                   [c.strip() for c in row.strip("|").split("|")]))
  for method in ("vanilla", "rld"):
    values = [runs[f"{method}_seed{s}"]["last_top1"] for s in (0, 1)]
    assert cells[method] == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (n=2)"
  teacher = json.loads((workdir / "teacher" / "results.json").read_text())
  assert cells["teacher"] == f"{teacher['last_top1']:.2f} (n=1)"
  assert "Paired gain over vanilla" in md
  assert re.search(r"in training steps: final runs \d+%(–\d+%)? .*, selection runs \d+%(–\d+%)? "
                   r"\(evaluated in their last 2 epochs only\), the teacher \d+%\.", md)
  assert not (workdir / "run.lock").exists()  # released at the end
  # Programs are compiled once per method and split: both weight factors share one.
  assert {p.name for p in (workdir / "warmup").iterdir()} == {
      "teacher", "rld_val", "rld_full", "vanilla_full"}
  assert runs["rld_seed0"]["config"]["teacher"]["precompute_logits"] is True
  # The selection runs train side by side (threads); the final runs one at a
  # time, each with no other run beside it.
  assert summary["timings"]["parallel_runs"] == 2 and summary["timings"]["final_runs_alone"]
  assert "up to 2 runs side by side (threads; the final runs one at a time)" in md
  spans = {r["name"]: (r["start"], r["end"]) for r in summary["timings"]["runs"]}
  assert set(spans) == {"teacher", *(f"runs/{name}" for name in runs),
                        "selection/rld_x1_seed0", "selection/rld_x0.25_seed0"}
  overlap = lambda a, b: spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
  for name in runs:
    assert not [other for other in spans if other != f"runs/{name}"
                and overlap(f"runs/{name}", other)]
  assert overlap("selection/rld_x1_seed0", "selection/rld_x0.25_seed0")
  # A run trained beside another gives what the same run gives alone.
  beside = workdir / "selection" / "rld_x1_seed0"
  alone = tmp_path / "alone"
  loop.train_and_evaluate(ml_collections.ConfigDict(
      json.loads((beside / "results.json").read_text())["config"]), str(alone))
  assert (alone / "history.json").read_bytes() == (beside / "history.json").read_bytes()
  for name in ("last", "best"):
    for f in ("model.json", "variables.npz"):
      assert (alone / "export" / name / f).read_bytes() == (beside / "export" / name / f).read_bytes()


def _write(root, name, method, seed, best, last, finished=True, first_evaluated=1, **config):
  d = root / name
  d.mkdir(parents=True)
  cfg = {"seed": seed, "dataset": {"train_split": "train", "eval_split": "test"},
         "distill_weight": 1.0}
  cfg.update(config)
  (d / "results.json").write_text(json.dumps({
      "method": method, "student": "cifar/resnet8x4", "dataset": "cifar100",
      "teacher": None if method == "vanilla" else "cifar/resnet32x4", "seed": seed,
      "finished": finished, "best_top1": best, "last_top1": last, "config": cfg,
      "history": [{"epoch": e, **({"top1": top1} if e >= first_evaluated else {})}
                  for e, top1 in ((1, last - 1), (2, best), (3, last))]}))


def test_report_groups_by_config_and_states_the_noise(tmp_path):
  vanilla = [71.0, 72.0, 70.5]
  rld = [72.5, 73.6, 71.9]
  for seed, (v, r) in enumerate(zip(vanilla, rld)):
    _write(tmp_path, f"v{seed}", "vanilla", seed, v + 0.5, v)
    _write(tmp_path, f"r{seed}", "rld", seed, r + 0.5, r)
  # Another rld config (other weights): its own column, never averaged in.
  _write(tmp_path, "r_other", "rld", 0, 10.5, 10.0, distill_weight=0.25)
  # A single run (no spread shown), evaluated after its last two epochs only
  # (config.eval_last_epochs=2): its curve starts at epoch 2.
  _write(tmp_path, "kd0", "kd", 0, 74.0, 73.5, first_evaluated=2)
  _write(tmp_path, "unfinished", "rld", 5, 1.0, 1.0, finished=False)
  table, cells, gains, unfinished = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert len(unfinished) == 1 and unfinished[0].endswith("unfinished/results.json")
  rld_cells = {k: v for k, v in cells.items() if k[1].startswith("rld")}
  assert sorted(sorted(v["last"]) for v in rld_cells.values()) == [[10.0], sorted(rld)]
  assert "73.50 (n=1)" in table and "± 0.00" not in table
  main = next(k for k in rld_cells if sorted(cells[k]["last"]) == sorted(rld))
  g = gains[main]
  diff = np.asarray(rld) - np.asarray(vanilla)
  half = stats.t.ppf(0.975, 2) * diff.std(ddof=1) / math.sqrt(3)
  assert g["mean"] == pytest.approx(diff.mean()) and g["low"] == pytest.approx(diff.mean() - half)
  assert not g["includes_zero"] and "above vanilla beyond noise" in table
  text = (tmp_path / "out" / "report.md").read_text()
  assert "Unfinished" in text
  assert (tmp_path / "out" / "accuracy.png").read_bytes().startswith(b"\x89PNG")
  assert re.search(r"rld \[\d\]", table)  # two rld configs, two columns
  # ... and a legend saying which is which.
  assert ("- cifar/resnet32x4 → cifar/resnet8x4, train → test: rld [1]: distill_weight = 0.25\n"
          "- cifar/resnet32x4 → cifar/resnet8x4, train → test: rld [2]: distill_weight = 1.0") in table


@pytest.mark.parametrize("arguments, message", [
    (dict(parallel_runs=0), "parallel_runs: need at least 1 run at a time, got 0"),
    (dict(seeds=0), "seeds: need at least 1, got 0"),
    (dict(selection_seeds=0), "selection_seeds: need at least 1, got 0"),
    (dict(student_epochs=0), "student_epochs: need at least 1, got 0"),
    (dict(methods=[]), "methods: need at least one method"),
    (dict(methods=["vanilla", "rdl"]), "methods: unknown rdl; each one of vanilla, kd"),
    (dict(methods=["vanilla", "rld", "rld"]), "methods: a method listed twice"),
    (dict(scales=[]), "scales: need at least one factor"),
    (dict(scales=[1.0, float("nan")]), r"scales: factors must be finite numbers > 0, got \[nan\]"),
    (dict(scales=[1.0, -0.5]), r"scales: factors must be finite numbers > 0, got \[-0.5\]"),
    (dict(scales=[1.0, 1.0000001]), "scales: a factor listed twice"),
])
def test_demo_refuses_arguments_it_cannot_run_with(tmp_path, arguments, message):
  with pytest.raises(demo.ArgumentError, match=f"^{message}"):
    demo.run_demo(str(tmp_path / "demo"), **arguments)
  assert not (tmp_path / "demo").exists()  # refused before any work


def test_vanilla_alone_needs_no_weight_factors(tmp_path):
  """Also: with ``final_runs_alone=False`` the final runs train side by side
  (the vanilla students beside the teacher)."""
  demo.check_arguments(1, 1, 1, ["vanilla"], [], 1, 1)  # nothing to choose: accepted
  summary = demo.run_demo(str(tmp_path / "demo"), seeds=2, teacher_epochs=1, student_epochs=1,
                          methods=["vanilla"], scales=[], selection_seeds=1, parallel_runs=2,
                          final_runs_alone=False)
  spans = {r["name"]: (r["start"], r["end"]) for r in summary["timings"]["runs"]}
  assert set(spans) == {"teacher", "runs/vanilla_seed0", "runs/vanilla_seed1"}
  (t0, t1), (v0, v1) = spans["teacher"], spans["runs/vanilla_seed0"]
  assert t0 < v1 and v0 < t1  # they overlapped
  md = (tmp_path / "demo" / "report.md").read_text()
  assert "up to 2 runs side by side (threads), so run times" in md
  assert "No distillation method was run (`--methods`), so no weights were chosen." in md
  assert "| method |" not in md and "How the distillation weights were chosen" not in md
  assert "| — → digits/resnet8 | rldjax_digits train → test | — |" in md


def test_demo_flag_errors_exit_1_naming_the_flag(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  for flag, message in (("--seeds=0", "error: --seeds: need at least 1, got 0"),
                        ("--scales=1,big", "error: --scales: factors must be numbers")):
    proc = subprocess.run([sys.executable, "-m", "experiments.demo", f"--workdir={tmp_path / 'd'}",
                           flag], cwd=root, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()


def test_an_empty_demo_workdir_is_a_flag_error_not_the_current_directory(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run([sys.executable, "-m", "experiments.demo", "--workdir="],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "flag --workdir=: empty (an unset shell variable?): the demo would write into the " \
      "current directory" in proc.stderr, proc.stderr[-3000:]
  assert not list(tmp_path.iterdir())  # the demo ran in the current directory


def test_demo_in_a_busy_workdir_exits_2_and_touches_nothing(tmp_path):
  """A second demo in a workdir where one is running stops at once with the
  launcher's status for a workdir in use, naming the lock, without a traceback."""
  workdir = tmp_path / "demo"
  workdir.mkdir()
  lock = workdir / "run.lock"
  lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "started": "now"}))
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run([sys.executable, "-m", "experiments.demo", f"--workdir={workdir}"],
                        cwd=root, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f"is in use by process {os.getpid()}" in proc.stderr and str(lock) in proc.stderr
  assert "Traceback" not in proc.stderr
  assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]  # nothing else written
  assert json.loads(lock.read_text())["pid"] == os.getpid()  # and the lock left alone


def test_a_demo_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "demo").write_text("notes")
  with pytest.raises(errors.WorkdirError, match="demo exists and is not a directory"):
    demo.run_demo(str(tmp_path / "demo"), seeds=1, teacher_epochs=1, student_epochs=1,
                  methods=["vanilla"], scales=[1.0], selection_seeds=1, parallel_runs=1)
  assert (tmp_path / "demo").read_text() == "notes"


def test_a_failed_demo_run_stops_the_demo_naming_the_run(tmp_path, monkeypatch):
  """A run's RunError ends the demo as the same error (same exit status),
  naming the run; no report is written and the demo's lock is released."""
  def diverge(config, workdir, stop_after_epochs=None):
    del config, stop_after_epochs
    raise errors.DivergedError(f"diverged: not finite at step 2 in {workdir}")
  monkeypatch.setattr(loop, "train_and_evaluate", diverge)
  workdir = tmp_path / "demo"
  with pytest.raises(errors.DivergedError,
                     match=r"^demo run warmup/teacher: diverged: not finite at step 2") as failed:
    demo.run_demo(str(workdir), seeds=1, methods=["vanilla"], parallel_runs=1)
  assert isinstance(failed.value.__cause__, errors.DivergedError)
  assert not (workdir / "report.md").exists() and not (workdir / "run.lock").exists()


def test_the_demo_flushes_pending_disk_writes_before_its_first_run(tmp_path, monkeypatch):
  """Pending writes (an install's gigabytes, written back ~30 s later)
  stalled the first runs' file writes for seconds and lowered their
  measured share in steps: the demo writes them to disk before anything is
  timed (those of its workdir's filesystem: here, with syncfs(2), on Linux)."""
  assert demo.flush_pending_writes(str(tmp_path)) is sys.platform.startswith("linux")
  calls = []
  monkeypatch.setattr(demo, "flush_pending_writes", lambda path: calls.append(("sync", path)))

  def first_run(config, workdir, stop_after_epochs=None):
    del config, stop_after_epochs
    calls.append("run")
    raise errors.DivergedError(f"diverged: stopped here by the test in {workdir}")
  monkeypatch.setattr(loop, "train_and_evaluate", first_run)
  with pytest.raises(errors.DivergedError):
    demo.run_demo(str(tmp_path / "demo"), seeds=1, methods=["vanilla"], parallel_runs=1)
  assert calls == [("sync", str(tmp_path / "demo")), "run"]


def test_vanilla_runs_without_a_distillation_run_get_their_own_rows(tmp_path):
  """Teachers reported alone, or vanilla students alone, are rows, not an empty table."""
  for seed, top1 in enumerate((70.0, 72.0)):
    _write(tmp_path / "students", f"v{seed}", "vanilla", seed, top1 + 0.5, top1)
  teacher = tmp_path / "teachers" / "t"
  _write(tmp_path / "teachers", "t", "vanilla", 0, 79.5, 79.0)
  results = json.loads((teacher / "results.json").read_text())
  results["student"] = "cifar/resnet32x4"
  (teacher / "results.json").write_text(json.dumps(results))
  table, cells, gains, _ = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  rows = [line for line in table.splitlines() if line.startswith("| — → ")]
  assert rows[:2] == ["| — → cifar/resnet32x4 | cifar100 train → test | — | 79.00 (n=1) |",
                      "| — → cifar/resnet8x4 | cifar100 train → test | — | 71.00 ± 1.41 (n=2) |"]
  assert not gains
  # With a distillation run, the teacher's run is its teacher column, not a row.
  _write(tmp_path / "students", "r0", "rld", 0, 73.0, 72.5)
  table, _, _, _ = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert [line for line in table.splitlines() if line.startswith("| ")
          and "→" in line and "teacher →" not in line][0] == (
      "| cifar/resnet32x4 → cifar/resnet8x4 | cifar100 train → test | 79.00 (n=1) "
      "| 71.00 ± 1.41 (n=2) | 72.50 (n=1) |")
  assert "— → cifar/resnet32x4" not in table


def test_a_report_without_two_shared_seeds_says_there_is_no_interval(tmp_path):
  _write(tmp_path, "v0", "vanilla", 0, 70.5, 70.0)
  _write(tmp_path, "r0", "rld", 0, 71.5, 71.0)
  _write(tmp_path, "r1", "rld", 1, 72.5, 72.0)  # a seed vanilla has not run
  table, _, gains, _ = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert list(gains.values()) == [None]
  assert "No paired gain over vanilla: it needs at least 2 seeds run by both" in table
  assert "Paired gain over vanilla (last epoch" not in table


def test_a_report_without_vanilla_says_there_is_no_gain_to_show(tmp_path):
  for seed in (0, 1):
    _write(tmp_path, f"r{seed}", "rld", seed, 71.5, 71.0 + seed)
  table, _, gains, _ = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert not gains
  assert "No paired gain over vanilla: no vanilla student was run with the same" in table
  # With vanilla runs of the same setup, the gain is there and the note is not.
  for seed in (0, 1):
    _write(tmp_path, f"v{seed}", "vanilla", seed, 70.5, 70.0)
  table, _, gains, _ = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert len(gains) == 1 and "no vanilla student was run" not in table


def test_unreadable_and_superseded_records_are_not_tabulated(tmp_path):
  _write(tmp_path, "v0", "vanilla", 0, 70.5, 70.0)
  (tmp_path / "damaged").mkdir()
  (tmp_path / "damaged" / "results.json").write_text('{"status": "fin')
  # What a launch that trained nothing left, once the corrected command took over.
  _write(tmp_path / "v0" / report.SUPERSEDED_DIR, ".", "vanilla", 0, 1.0, 1.0, finished=False)
  assert report.SUPERSEDED_DIR == workdir_lib.SUPERSEDED_DIR
  table, cells, _, unfinished = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert unfinished == [f"{tmp_path}/damaged/results.json (unreadable: JSONDecodeError: "
                        "Unterminated string starting at: line 1 column 12 (char 11))"]
  assert [c["last"] for c in cells.values()] == [[70.0]]
  assert "damaged/results.json (unreadable" in (tmp_path / "out" / "report.md").read_text()


def test_runs_resumed_on_another_machine_are_named(tmp_path, capsys):
  """A finished run whose results.json records machine changes (a session
  resumed it with other usable cores) is tabulated and named under the
  tables with what differed; runs that stayed on one machine are not."""
  for seed in (0, 1):
    _write(tmp_path, f"v{seed}", "vanilla", seed, 70.5, 70.0)
  path = tmp_path / "v1" / "results.json"
  record = json.loads(path.read_text())
  record["machine_changes"] = [["usable cores: 2 then, 1 now"],
                               ["usable cores: 2 then, 8 now", "jaxlib: '0.10.2' then, '0.11.0' now"]]
  path.write_text(json.dumps(record))
  _, cells, _, _ = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert [len(c["last"]) for c in cells.values()] == [2]  # still tabulated
  expected = (f"- {tmp_path}/v1: usable cores: 2 then, 1 now; usable cores: 2 then, 8 now, "
              "jaxlib: '0.10.2' then, '0.11.0' now")
  assert report.moved_runs(report.collect([str(tmp_path)])) == [expected]
  text = (tmp_path / "out" / "report.md").read_text()
  assert "## Runs resumed on another machine than the one that started them\n" in text
  assert expected + "\n" in text and f"{tmp_path}/v0" not in text.split("another machine")[1]
  report.main([str(tmp_path), "--out", str(tmp_path / "out")])  # the command says it too
  printed = capsys.readouterr().out
  assert f"resumed on another machine: {expected[2:]}\n" in printed
  assert f"{tmp_path}/v0:" not in printed


def test_runs_of_one_cell_that_read_different_files_are_named(tmp_path, capsys):
  """A cell's runs whose inputs.json differ (another teacher's weights on one
  seed) are listed under the tables with what differs; keys that only some
  runs recorded (a run from before the record) are not compared."""
  teacher = workdir_lib.TEACHER_WEIGHTS
  assert report.INPUTS_NAME == workdir_lib.INPUTS_NAME
  for seed, crc in enumerate(["aaaa0001", "aaaa0001", "bbbb0002"]):
    _write(tmp_path, f"kd{seed}", "kd", seed, 71.5, 71.0)
    (tmp_path / f"kd{seed}" / "inputs.json").write_text(json.dumps(
        {teacher: crc, "train split 'train' (examples)": 50000}))
  _write(tmp_path, "kd3", "kd", 3, 71.5, 71.0)  # no record: nothing to compare
  for seed in range(2):
    _write(tmp_path, f"v{seed}", "vanilla", seed, 70.5, 70.0)
    (tmp_path / f"v{seed}" / "inputs.json").write_text(json.dumps(
        {"train split 'train' (examples)": 50000}))
  report.main([str(tmp_path)])
  expected = (f"- cifar/resnet32x4 → cifar/resnet8x4, kd: {teacher} differs between its runs: "
              f"\"aaaa0001\" in {tmp_path}/kd0, {tmp_path}/kd1; \"bbbb0002\" in {tmp_path}/kd2")
  assert report.mixed_inputs(report.collect([str(tmp_path)])) == [expected]
  text = (tmp_path / "report.md").read_text()
  assert "## Runs tabulated together that read different files\n\n" + expected in text
  assert f"different files in one cell: {expected[2:]}" in capsys.readouterr().out
  # Runs that agree: no such section.
  (tmp_path / "kd2" / "inputs.json").write_text(json.dumps(
      {teacher: "aaaa0001", "train split 'train' (examples)": 50000}))
  report.main([str(tmp_path)])
  assert "read different files" not in (tmp_path / "report.md").read_text()


def test_a_report_of_unfinished_runs_only_says_so(tmp_path):
  _write(tmp_path, "u", "rld", 0, 1.0, 1.0, finished=False)
  table, _, _, unfinished = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert table.startswith("No finished runs") and len(unfinished) == 1


def test_unfinished_runs_say_where_they_stand(tmp_path):
  """A results.json saying "running" is checked against run.lock: a process
  killed outright (or aborted by the distributed service when a peer stops)
  cannot update its record."""
  def unfinished(name, status, **fields):
    _write(tmp_path, name, "rld", 0, 1.0, 1.0, finished=False)
    path = tmp_path / name / "results.json"
    record = json.loads(path.read_text())
    record.update(status=status, epochs_completed=1, num_epochs=10, **fields)
    path.write_text(json.dumps(record))
  unfinished("failed", "failed", error="DivergedError: diverged: the loss is not finite\nmore")
  unfinished("dead", "running")
  unfinished("nolock", "running")
  unfinished("live", "running")
  unfinished("elsewhere", "running")  # its lock on another host, heartbeat fresh
  unfinished("cut_off", "running")  # its lock on another host, no heartbeat for 200 s
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  pid, host = int(dead.stdout), socket.gethostname()
  (tmp_path / "dead" / run_lock.LOCK_NAME).write_text(json.dumps(
      {"host": host, "pid": pid, "started": "2026-12-05 11:00:00"}))
  for name, age in (("elsewhere", 5), ("cut_off", 200)):
    lock = tmp_path / name / run_lock.LOCK_NAME
    lock.write_text(json.dumps({"host": "another-host", "pid": 4242, "started": "earlier",
                                "token": "theirs", "heartbeat_seconds": 15}))
    os.utime(lock, (time.time() - age, time.time() - age))
  with run_lock.WorkdirLock(str(tmp_path / "live")):
    _, _, _, lines = report.write_report([str(tmp_path)], str(tmp_path / "out"))
  said = {os.path.basename(os.path.dirname(line.split(" (")[0])): line for line in lines}
  assert said["failed"].endswith(
      "(failed, 1/10 epochs: DivergedError: diverged: the loss is not finite)")
  assert said["dead"].endswith(
      f"(status running, 1/10 epochs, but no process runs it (gone: process {pid} on {host}, "
      "no longer running): it stopped without updating results.json, killed, aborted or cut "
      "off; its "
      "command resumes it)")
  assert "but no process runs it (no lock)" in said["nolock"]
  assert f"(running, 1/10 epochs: held by process {os.getpid()} on {host} since " in said["live"]
  assert re.search(r"\(running, 1/10 epochs: held by process 4242 on another-host since "
                   r"earlier; last heartbeat [5-9] s ago\)$", said["elsewhere"])
  assert re.search(r"\(status running, 1/10 epochs, but no process runs it \(gone: process 4242 "
                   r"on another-host sent no heartbeat for 2\d\d s \(it touches its lock every "
                   r"15 s\)\): it stopped without updating results.json, killed, aborted or cut "
                   r"off; its command resumes it\)$", said["cut_off"])
  assert "- " + said["dead"] in (tmp_path / "out" / "report.md").read_text()


def test_the_report_command_refuses_a_directory_that_does_not_exist(tmp_path, capsys):
  _write(tmp_path, "v0", "vanilla", 0, 70.5, 70.0)
  with pytest.raises(SystemExit) as stopped:
    report.main([str(tmp_path), str(tmp_path / "typo")])
  assert stopped.value.code == 2
  assert f"not a directory: {tmp_path}/typo" in capsys.readouterr().err
  assert not (tmp_path / "report.md").exists()
  report.main([str(tmp_path)])
  assert "vanilla" in (tmp_path / "report.md").read_text()


def test_the_report_command_says_when_it_cannot_write_the_report(tmp_path, capsys):
  _write(tmp_path, "v0", "vanilla", 0, 70.5, 70.0)
  (tmp_path / "a_file").write_text("")
  with pytest.raises(SystemExit) as stopped:
    report.main([str(tmp_path), "--out", str(tmp_path / "a_file" / "out")])
  assert stopped.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith(f"python -m experiments.report: error: cannot write the report in "
                        f"{tmp_path}/a_file/out: [Errno 20] Not a directory")
  assert "Traceback" not in err


def test_weight_factors_that_tie_but_for_float_rounding_go_to_the_first_listed():
  scales = [1.0, 0.25, 4.0]
  # What a demo got: the same accuracies in another summation order.
  tied = {1.0: 98.19444444444444, 0.25: 96.59722222222223, 4.0: 98.19444444444446}
  assert demo.best_factor(scales, tied) == 1.0
  accuracies = [100 * k / 288 for k in (288, 281, 287, 281, 275, 279, 283, 282, 281, 287)]
  forward, backward = sum(accuracies) / 10, sum(accuracies[::-1]) / 10
  assert forward != backward  # the rounding this guards against
  assert demo.best_factor(scales, {1.0: backward, 0.25: 90.0, 4.0: forward}) == 1.0
  assert demo.best_factor([4.0, 1.0, 0.25], {1.0: backward, 0.25: 90.0, 4.0: forward}) == 4.0
  # One validation image over 10 scores is 0.035 points: that is a difference.
  assert demo.best_factor(scales, {1.0: 98.19, 0.25: 96.6, 4.0: 98.19 + 100 / 2880}) == 4.0
