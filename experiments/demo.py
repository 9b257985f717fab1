"""The offline demo: teacher, then students with vanilla, kd, dkd, rld and
ldrld over several seeds, on real handwritten digits (no download), through
the same TFDS -> pipeline -> sharded step -> Orbax path as CIFAR-100.

  python -m experiments.demo --workdir=runs/demo

Writes every run under WORKDIR, then WORKDIR/report.md and WORKDIR/accuracy.png.
"""
import os
import time

from absl import app, flags, logging

flags.DEFINE_string("workdir", "runs/demo", "where the runs and the report go")
flags.DEFINE_integer("seeds", 3, "seeds per student method")
flags.DEFINE_integer("teacher_epochs", 10, "teacher training epochs")
flags.DEFINE_integer("student_epochs", 8, "student training epochs")
flags.DEFINE_list("methods", ["vanilla", "kd", "dkd", "rld", "ldrld"], "student methods")
flags.DEFINE_string("data_dir", "", "TFDS data dir (default: WORKDIR/tfds)")
FLAGS = flags.FLAGS


def run_demo(workdir, seeds, teacher_epochs, student_epochs, methods, data_dir=""):
  import jax  # pylint: disable=import-outside-toplevel
  from experiments import report  # pylint: disable=import-outside-toplevel
  from experiments.configs import digits  # pylint: disable=import-outside-toplevel
  from rldjax.train import loop  # pylint: disable=import-outside-toplevel
  # Runs with the same shapes compile to the same programs: cache them.
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  data_dir = data_dir or os.path.join(workdir, "tfds")
  start = time.time()

  def run(name, arg, epochs):
    config = digits.get_config(f"{arg},epochs={epochs}")
    config.dataset.data_dir = data_dir
    result = loop.train_and_evaluate(config, os.path.join(workdir, name))
    print(f"[{time.time() - start:6.1f}s] {name:<18} best top-1 {result['best_top1']:6.2f} "
          f"(epoch {result['best_epoch']}), last {result['last_top1']:6.2f}", flush=True)

  run("teacher", "method=vanilla,model=teacher,seed=0", teacher_epochs)
  teacher = os.path.join(workdir, "teacher", "export", "last")
  for method in methods:
    for seed in range(seeds):
      run(f"{method}_seed{seed}", f"method={method},teacher={teacher},seed={seed}",
          student_epochs)
  table, _, _ = report.write_report([workdir], workdir)
  print(table)
  print(f"wrote {os.path.join(workdir, 'report.md')} and {os.path.join(workdir, 'accuracy.png')}"
        f" in {time.time() - start:.0f}s")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run_demo(FLAGS.workdir, FLAGS.seeds, FLAGS.teacher_epochs, FLAGS.student_epochs,
           FLAGS.methods, FLAGS.data_dir)


if __name__ == "__main__":
  app.run(main)
