"""The offline demo, in the regime the papers study: a converged teacher, a
much smaller student trained to convergence, distillation weights sized for
10 classes on a validation split, several seeds, paired comparisons.

  python -m experiments.demo --workdir=runs/demo      # what `make demo` runs

On the real handwritten digits of ``rldjax_digits`` (no download), through the
same TFDS -> in-memory data -> sharded step -> Orbax checkpoint path as CIFAR-100:

1. **Teacher**: ``digits/resnet14`` (vanilla CE) on the training split; its
   last epoch is the teacher, as the published teachers are.
2. **Weights sized for 10 classes, chosen without the test split.** The
   CIFAR-100 recipes weigh the distillation terms for 100 classes (DKD/RLD/LDRLD
   start an order of magnitude above the CE here). For each method the
   distillation weights are scaled by each factor of ``--scales``; every
   candidate trains on the first 80% of the training split and is scored on
   the other 20% (top-1 averaged over the last 5 epochs and over
   ``--selection_seeds`` seeds: less noisy than one epoch; these runs evaluate
   only those epochs, ``config.eval_last_epochs``); the best factor is kept
   (ties: the one listed first).
3. **Final runs**: ``digits/resnet8`` students, ``--seeds`` seeds per method,
   trained on the whole training split and scored on the test split. A seed
   fixes the initialisation and the data order, so method and vanilla runs of
   one seed are paired.
4. ``report.md`` (mean ± std, paired gain over vanilla with a 95% interval,
   the selection table, timings) and ``accuracy.png`` in WORKDIR.

Exit status, as the launcher's (``experiments/train.py``): 0 done, 1 a flag
error (a value the demo cannot run with is refused before anything is
trained, naming the flag), 2 a run that cannot start (the demo's workdir in
use by another demo, a run's workdir holding another experiment: rerun with a
new ``--workdir``), 3 a run diverged, 4 a run's storage failed (a full disk:
free space and rerun), 130 interrupted by Ctrl-C (the same command goes on:
finished runs are reused, the others resume). No report is written unless
every run finished.

Compilation happens once for the teacher and once per student method and split
(the loss weights are run-time arguments of the programs), in warm-up runs
stopped after one epoch (under WORKDIR/warmup, reported separately); with JAX's
persistent cache a rerun compiles nothing. The students' runs compute the
teacher's logits of the training images once per run
(``teacher.precompute_logits``: digits are not augmented). The numbers are
whatever the runs give; the tables are computed from the runs' results.json
files.

Runs that do not depend on one another train side by side, ``--parallel_runs``
at a time (threads of this process; default one per CPU core on the CPU,
where one of these small runs leaves cores idle): the methods' selection runs
as soon as what each needs is done (:mod:`experiments.task_graph`). Warm-ups
(compilations) run by themselves, and so do the final runs (the reported
ones; ``--nofinal_runs_alone``: side by side as well), so that their timings
in the report are the training loop's own: beside another run on a 2-core CPU
a final run's share of time in steps varied from 81% to 88% from run to run,
alone 84-86% (BENCHMARKS.md); it makes the demo ~15% longer there. A run's
results are the same whatever runs beside it.

The demo first flushes the pending disk writes of its workdir's filesystem
(:func:`flush_pending_writes`), so that the runs' timings measure the runs.
Right after an install (``make demo`` on a fresh machine installs first), the
kernel writes gigabytes back about 30 s later, in the middle of the first
runs; on ext4 a small file written and renamed into place (results.json, a
checkpoint's files) then waited up to 1.4 s, and a run's share of wall time
in steps fell from 84% to 48% (measured with 2.3 GB of pending writes).
"""
from __future__ import annotations

import functools
import json
import math
import numbers
import os
import shutil
import sys
import threading
import time

if __name__ == "__main__":  # before the slower imports below
  from experiments import start_up
  start_up.begin()  # Ctrl-C's start-up handler; the restart with huge pages

import ml_collections  # pylint: disable=wrong-import-position
from absl import app, flags, logging

from experiments import exit_status, task_graph

flags.DEFINE_string("workdir", "runs/demo", "where the runs and the report go")
flags.DEFINE_integer("seeds", 5, "seeds per method for the final runs")
flags.DEFINE_integer("selection_seeds", 2, "seeds per candidate weight on the validation split")
flags.DEFINE_integer("teacher_epochs", 30, "teacher training epochs")
flags.DEFINE_integer("student_epochs", 30, "student training epochs")
flags.DEFINE_list("methods", ["vanilla", "kd", "dkd", "rld", "ldrld"], "student methods")
flags.DEFINE_list("scales", ["1", "0.25", "4"],
                  "factors on the recipes' distillation weights to choose from")
flags.DEFINE_string("data_dir", "", "TFDS data dir (default: WORKDIR/tfds)")
flags.DEFINE_string("compilation_cache", None, "JAX persistent compilation cache directory "
                    "(default $RLDJAX_CACHE_DIR or ~/.cache/rldjax/jax); 'none' turns it off")
flags.DEFINE_integer("parallel_runs", None, "runs trained side by side (threads); default: "
                     "one per CPU core on the CPU, else 1. The results do not depend on it")
flags.DEFINE_boolean("final_runs_alone", True, "train the final (reported) runs one at a time, "
                     "so that their timings are the loop's own, not shared with another run; "
                     "false: side by side like the selection runs (a shorter demo). The "
                     "results do not depend on it")
flags.register_validator(
    "workdir", lambda value: bool(value.strip()),
    "empty (an unset shell variable?): the demo would write into the current directory; "
    "pass a directory, or leave the flag out for runs/demo")
FLAGS = flags.FLAGS


SELECTION_EPOCHS = 5  # a candidate's score: its mean validation top-1 over its last 5 epochs


def best_factor(scales, scores):
  """The factor of ``scales`` with the best validation score; ties go to the
  one listed first.

  Scores are means of top-1 percentages, and the same accuracies summed in
  another order differ in the last bits (98.19444444444444 against
  98.19444444444446 in a demo, which then took x4 over the recipe's x1), so
  they are compared rounded to 1e-6, far below one validation image
  (100 / 288 / 10 points here).
  """
  rounded = {s: round(scores[s], 6) for s in scales}
  return max(scales, key=lambda s: (rounded[s], -scales.index(s)))


def scaled_config(method, seed, epochs, scale, teacher, data_dir, val):
  from experiments.configs import digits  # pylint: disable=import-outside-toplevel
  args = f"method={method},seed={seed},epochs={epochs},val={val}"
  if method != "vanilla":
    args += f",teacher={teacher}"
  config = digits.get_config(args)
  config.dataset.data_dir = data_dir
  config.distill_weight = config.distill_weight * scale
  config.kd_weight = config.kd_weight * scale
  # One checkpoint, at the end (it makes the run's end durable and lets a rerun
  # continue training): these runs last seconds, a mid-run one would cost
  # more than the work it could save.
  config.checkpoint.every_epochs = epochs
  config.steps_per_call = 32  # a whole epoch per device call: these models are tiny (BENCHMARKS.md)
  # No augmentation on digits: the teacher's logits of each training image are
  # computed once per run instead of in every step (same values to rounding).
  config.teacher.precompute_logits = True
  if val:  # what the selection reads (the final runs evaluate every epoch for the plot)
    config.eval_last_epochs = SELECTION_EPOCHS
  return config


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}" + ("" if n == 1 else "s")


def default_parallel_runs() -> int:
  """Runs side by side by default: one per CPU core the process may use when
  JAX computes on the CPU (a demo run keeps about one core busy), else 1."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "cpu":
    return 1
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)


class ArgumentError(ValueError):
  """An argument of :func:`run_demo` (the flag of the same name) the demo
  cannot run with; the message starts with its name."""


def flush_pending_writes(path: str) -> bool:
  """Writes the pending writes of the filesystem holding ``path`` to disk
  (Linux's ``syncfs(2)``), waiting for them; returns whether it could. Only
  that filesystem: a whole-system ``sync`` would also wait on every other
  mount, a network one that stopped answering included. Elsewhere (no
  ``syncfs``) it does nothing and returns False."""
  import ctypes  # pylint: disable=import-outside-toplevel
  import ctypes.util  # pylint: disable=import-outside-toplevel
  try:
    syncfs = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).syncfs
  except (OSError, AttributeError):
    return False
  fd = os.open(path, os.O_RDONLY)
  try:
    return syncfs(fd) == 0
  finally:
    os.close(fd)


def check_arguments(seeds, teacher_epochs, student_epochs, methods, scales, selection_seeds,
                    parallel_runs) -> None:
  """Raises :class:`ArgumentError` for an argument the demo cannot run with,
  before anything is trained (each would otherwise fail minutes later, or
  name no flag)."""
  from rldjax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  for name, value in (("seeds", seeds), ("teacher_epochs", teacher_epochs),
                      ("student_epochs", student_epochs), ("selection_seeds", selection_seeds)):
    if value < 1:
      raise ArgumentError(f"{name}: need at least 1, got {value}")
  if parallel_runs < 1:
    raise ArgumentError(f"parallel_runs: need at least 1 run at a time, got {parallel_runs}")
  methods = list(methods)
  if not methods:
    raise ArgumentError("methods: need at least one method")
  unknown = [m for m in methods if m not in config_lib.METHODS]
  if unknown:
    raise ArgumentError(f"methods: unknown {', '.join(unknown)}; each one of "
                        f"{', '.join(config_lib.METHODS)}")
  if len(set(methods)) < len(methods):
    raise ArgumentError(f"methods: a method listed twice in {','.join(methods)}")
  if methods == ["vanilla"]:
    return  # no weights to choose
  if not scales:
    raise ArgumentError("scales: need at least one factor to choose the weights from")
  bad = [s for s in scales if not (isinstance(s, numbers.Real) and math.isfinite(s) and s > 0)]
  if bad:
    raise ArgumentError(f"scales: factors must be finite numbers > 0, got {bad}")
  if len({f"{s:g}" for s in scales}) < len(scales):  # the runs are named by f"{s:g}"
    raise ArgumentError(f"scales: a factor listed twice in {list(scales)}")


def run_demo(workdir, seeds=5, teacher_epochs=30, student_epochs=30,
             methods=("vanilla", "kd", "dkd", "rld", "ldrld"), scales=(1.0, 0.25, 4.0),
             data_dir="", selection_seeds=2, parallel_runs=None, final_runs_alone=True):
  """Runs the whole demo; returns {"selection": {...}, "gains": ..., "timings": ...}.

  ``parallel_runs``: how many runs train side by side (threads of one
  process, :mod:`experiments.task_graph`); None: :func:`default_parallel_runs`.
  ``final_runs_alone``: the final runs train one at a time (each with no other
  run beside it). The results depend on neither. ``timings["runs"]`` lists
  each timed run's ``start`` and ``end`` (seconds since the demo started).

  The demo holds ``WORKDIR/run.lock`` while it works
  (:class:`rldjax.run_lock.WorkdirLock`): a second demo in the same
  workdir raises :class:`rldjax.errors.WorkdirError` at once, before it
  touches anything (its warm-ups would otherwise delete the first one's);
  the lock of a demo that was killed is taken over.
  """
  from rldjax import run_lock  # pylint: disable=import-outside-toplevel
  from rldjax.train import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  workdir = workdir_lib.local_path(workdir)
  workers = default_parallel_runs() if parallel_runs is None else int(parallel_runs)
  check_arguments(seeds, teacher_epochs, student_epochs, methods, scales, selection_seeds,
                  workers)
  workdir_lib.ensure_workdir(workdir)
  with run_lock.WorkdirLock(workdir):
    return _run_demo(workdir, seeds, teacher_epochs, student_epochs, list(methods),
                     list(scales), data_dir or os.path.join(workdir, "tfds"), selection_seeds,
                     workers, bool(final_runs_alone))


def _run_demo(workdir, seeds, teacher_epochs, student_epochs, methods, scales, data_dir,
              selection_seeds, workers, final_runs_alone):
  """:func:`run_demo`'s work, in the locked ``workdir`` (an absolute path)."""
  from experiments import report  # pylint: disable=import-outside-toplevel
  from experiments.configs import digits  # pylint: disable=import-outside-toplevel
  from rldjax import errors, runtime  # pylint: disable=import-outside-toplevel
  from rldjax.train import loop, programs, results  # pylint: disable=import-outside-toplevel
  start = time.time()
  flush_pending_writes(workdir)  # before anything is timed (the module docstring)
  timings = {"warmup_s": 0.0, "runs": [], "parallel_runs": workers,
             "final_runs_alone": final_runs_alone, "disk_flush_s": time.time() - start}
  if timings["disk_flush_s"] >= 0.5:
    print(f"[{time.time() - start:6.1f}s] flushed the pending disk writes "
          f"({timings['disk_flush_s']:.1f}s)", flush=True)
  lock = threading.Lock()

  def run(name, config, record=True, stop_after_epochs=None):
    runtime.freeze_heap()  # a full GC in a run would scan every earlier run's objects
    began = time.time() - start
    try:
      result = loop.train_and_evaluate(config, os.path.join(workdir, name), stop_after_epochs)
    except errors.RunError as err:  # the same error (and exit status), naming the run
      raise type(err)(f"demo run {name}: {err}") from err
    if record:
      with lock:
        timings["runs"].append({"name": name, "wall_s": result["wall_time_s"],
                                "steps_s": result["train_time_s"], "start": began,
                                "end": time.time() - start})
      print(f"[{time.time() - start:6.1f}s] {name:<28} top-1 last {result['last_top1']:6.2f}, "
            f"best {result['best_top1']:6.2f} (epoch {result['best_epoch']}); "
            f"{result['train_time_s'] / max(result['wall_time_s'], 1e-9):.0%} of "
            f"{result['wall_time_s']:.1f}s in steps, {result['compile_time_s']:.1f}s compiling",
            flush=True)
    return result

  def warm_up(name, config):
    """Compiles ``config``'s programs in a throwaway run stopped after one
    epoch, with a checkpoint at its end as at a run's end, so that the timed
    runs measure training."""
    t0 = time.time()
    config = ml_collections.ConfigDict(config.to_dict())
    config.checkpoint.every_epochs = 1
    config.eval_last_epochs = 0  # its one epoch evaluated: the evaluation is compiled too
    shutil.rmtree(os.path.join(workdir, "warmup", name), ignore_errors=True)
    run(os.path.join("warmup", name), config, record=False, stop_after_epochs=1)
    seconds = time.time() - t0
    with lock:
      timings["warmup_s"] += seconds
    print(f"[{time.time() - start:6.1f}s] compiled {name} ({seconds:.0f}s)", flush=True)

  teacher_config = digits.get_config(f"method=vanilla,model=teacher,epochs={teacher_epochs}")
  teacher_config.dataset.data_dir = data_dir
  teacher_config.checkpoint.every_epochs = 15
  teacher_config.steps_per_call = 32  # a whole epoch per device call (BENCHMARKS.md)
  teacher = os.path.join(workdir, "teacher", "export", "last")
  student = lambda method, seed, scale, val: scaled_config(
      method, seed, student_epochs, scale, teacher, data_dir, val)

  # The students' programs: the method and the split (its size sets the
  # schedule) are part of them; the loss weights are not
  # (rldjax.train.programs), so one warm-up serves every weight factor.
  tuned = [m for m in methods if m != "vanilla"]
  warmed = {}  # program key -> the warm-up task compiling it

  def warm_task(method, val):
    config = student(method, 0, 1.0, val)
    key = (programs.program_key(config), val)  # and the split, whose size they depend on
    name = f"{method}_{'val' if val else 'full'}"
    if key in warmed:
      return []
    warmed[key] = f"warmup/{name}"
    deps = () if method == "vanilla" else ("teacher",)
    return [task_graph.Task(f"warmup/{name}", lambda: warm_up(name, config), deps,
                            alone=True)]

  def deps_of(method, val):
    return (warmed[(programs.program_key(student(method, 0, 1.0, val)), val)],)

  selection = {}

  def choose(method):
    """The factor with the best validation score (ties: the first listed)."""
    scores = {}
    for scale in scales:
      values = [validation[f"selection/{method}_x{scale:g}_seed{seed}"]
                for seed in range(selection_seeds)]
      scores[scale] = sum(values) / len(values)
    chosen = best_factor(scales, scores)
    selection[method] = {"scores": {f"{k:g}": v for k, v in scores.items()}, "chosen": chosen}

  validation = {}  # selection run -> its top-1 on train[80%:], mean of the last 5 epochs

  def select_run(name, config):
    scores = [h["top1"] for h in results.evaluated_records(run(name, config)["history"])]
    scores = scores[-SELECTION_EPOCHS:]
    with lock:
      validation[name] = sum(scores) / len(scores)

  def final_run(method, seed):
    scale = selection[method]["chosen"] if method in selection else 1.0
    run(os.path.join("runs", f"{method}_seed{seed}"), student(method, seed, scale, False))

  # Listed in the order they start in when several may: the warm-ups first,
  # each by itself (compiling gains nothing from company, and a run beside a
  # compilation would measure the compilation too: task_graph).
  tasks = [task_graph.Task("warmup/teacher", lambda: warm_up("teacher", teacher_config),
                           alone=True)]
  if "vanilla" in methods:
    tasks += warm_task("vanilla", False)
  tasks.append(task_graph.Task("teacher", lambda: run("teacher", teacher_config),
                               ("warmup/teacher",)))
  for val in (True, False):
    for method in tuned:
      tasks += warm_task(method, val)
  for method in tuned:
    tasks.append(task_graph.Task(
        f"choose/{method}", functools.partial(choose, method),
        tuple(f"selection/{method}_x{s:g}_seed{seed}" for s in scales
              for seed in range(selection_seeds))))
  for method in tuned:
    for scale in scales:
      for seed in range(selection_seeds):
        name = f"selection/{method}_x{scale:g}_seed{seed}"
        tasks.append(task_graph.Task(
            name, functools.partial(select_run, name, student(method, seed, scale, True)),
            deps_of(method, True)))
  for method in methods:
    chosen_after = (f"choose/{method}",) if method in tuned else ()
    for seed in range(seeds):
      tasks.append(task_graph.Task(f"runs/{method}_seed{seed}",
                                   functools.partial(final_run, method, seed),
                                   deps_of(method, False) + chosen_after, alone=final_runs_alone))
  task_graph.run_graph(tasks, workers)
  selection = {m: selection[m] for m in tuned}  # in the listed order, whatever ended first

  def shares(prefix):  # "lo%–hi%" of the recorded runs' wall time spent in steps
    share = [r["steps_s"] / max(r["wall_s"], 1e-9) for r in timings["runs"]
             if r["name"].startswith(prefix)]
    low, high = f"{min(share, default=0):.0%}", f"{max(share, default=0):.0%}"
    return low if low == high else f"{low}–{high}"

  scored = _count(min(SELECTION_EPOCHS, student_epochs), "epoch")  # what a candidate's score reads
  lines = ["Teacher `digits/resnet14` (vanilla, last epoch) and students `digits/resnet8` on "
           "`rldjax_digits` (1438 training / 359 test images, 10 classes). Students train "
           f"{_count(student_epochs, 'epoch')}, the teacher {teacher_epochs}; "
           f"{_count(seeds, 'seed')} per method.", ""]
  if selection:
    lines += ["**How the distillation weights were chosen** (never on the test split): each "
              "method's recipe weights times a factor, trained on `train[:80%]` and scored on "
              f"`train[80%:]` (top-1 over the last {scored}, mean of "
              f"{_count(selection_seeds, 'seed')}); "
              "the best factor was kept for the final runs:", "",
              "| method | " + " | ".join(f"×{s:g}" for s in scales) + " | chosen |",
              "|---|" + "---|" * (len(scales) + 1)]
  else:
    lines.append("No distillation method was run (`--methods`), so no weights were chosen.")
  for method, sel in selection.items():
    lines.append(f"| {method} | " + " | ".join(f"{sel['scores'][f'{s:g}']:.2f}" for s in scales)
                 + f" | ×{sel['chosen']:g} |")
  if workers == 1:
    side = "one run at a time; "
  elif final_runs_alone:
    side = (f"up to {workers} runs side by side (threads; the final runs one at a time), so "
            "run times below may add up to more than the total; ")
  else:
    side = (f"up to {workers} runs side by side (threads), so run times below add up to more "
            "than the total; ")
  lines += ["", f"Timing: {time.time() - start:.0f}s in all, {side}compilation "
            f"{timings['warmup_s']:.0f}s of run time, once for the teacher and once per method "
            "and split (warm-up runs stopped after one epoch). Share of each run's wall time "
            f"spent in training steps: final runs {shares('runs/')} (the rest: evaluation "
            "every epoch, checkpoints, exports)"
            + (f", selection runs {shares('selection/')} (evaluated in their last "
               f"{scored} only)" if tuned else "")
            + f", the teacher {shares('teacher')}."]
  table, _, gains, _ = report.write_report(
      [os.path.join(workdir, "teacher"), os.path.join(workdir, "runs")], workdir,
      preamble="\n".join(lines))
  summary = {"selection": selection, "timings": timings,
             "gains": {m: g for (row, m), g in gains.items()}}
  with open(os.path.join(workdir, "demo.json"), "w") as f:
    json.dump(summary, f, indent=1, default=str)
  print("\n".join(lines))
  print(table)
  print(f"wrote {os.path.join(workdir, 'report.md')} and {os.path.join(workdir, 'accuracy.png')}"
        f" in {time.time() - start:.0f}s")
  return summary


def main(argv):
  del argv
  from rldjax import runtime  # pylint: disable=import-outside-toplevel
  runtime.set_cpu_flags()
  runtime.import_tensorflow_without_keras()
  if FLAGS.compilation_cache != "none":
    runtime.use_compilation_cache(FLAGS.compilation_cache)
  logging.set_verbosity(logging.WARNING)
  try:
    scales = [float(s) for s in FLAGS.scales]
  except ValueError:
    _flag_error(f"scales: factors must be numbers, got {FLAGS.scales}")
  try:
    exit_status.exit_on_run_error(
        run_demo, FLAGS.workdir, FLAGS.seeds, FLAGS.teacher_epochs, FLAGS.student_epochs,
        FLAGS.methods, scales, FLAGS.data_dir, FLAGS.selection_seeds, FLAGS.parallel_runs,
        FLAGS.final_runs_alone,
        on_interrupt="the same command goes on, reusing the runs that finished and resuming "
        "the others from their last checkpoints")
  except ArgumentError as err:
    _flag_error(str(err))
  exit_status.ignore_interrupts_from_now()  # done: a late Ctrl-C does not change status 0


def _flag_error(message):
  """Ends the process as a flag error (status 1, as the launcher's), naming the flag."""
  sys.stderr.write(f"error: --{message}\n")
  sys.exit(1)


if __name__ == "__main__":
  app.run(main)
