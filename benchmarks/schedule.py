"""The whole training loop's sustained speed, and a full schedule's time from it.

  python benchmarks/schedule.py        # cifar100 res32x4 -> res8x4, rld, 2 epochs of 50000 images
  python benchmarks/schedule.py --epochs=3 --steps_per_call=16
  python benchmarks/schedule.py --config=experiments/configs/digits.py:method=rld \
      --examples=1438,359 --epochs=5

Runs the launcher's loop (:func:`rldjax.train.loop.train_and_evaluate`:
in-memory data and augmentation on the device, the sharded step, evaluation
every epoch, Orbax checkpoints, exports) on all local devices, for
``--epochs`` epochs of the config's full schedule (then stopped, as a
preemption would stop it), on synthetic data of the dataset's shapes
(:mod:`rldjax.data.synthetic`, ``--examples=TRAIN,EVAL``; CIFAR-100's
50000/10000 by default, so no dataset is needed) with a randomly initialised
teacher export. It prints the images/s in steps, the share of the wall time
without compilation spent in steps, the compilation time, the seconds per epoch without
compilation, and that rate times the config's ``num_epochs`` (240 for the
CIFAR-100 recipes): the figure of BENCHMARKS.md's goal for accelerators (a
full res32x4 -> res8x4 schedule in <= 10 minutes on one H100). The seconds
per epoch include the run's start (data to the device, teacher loaded) and
its end (exports), so the projection errs long. Compilation is measured
afresh (no persistent cache) unless ``--compilation_cache`` names one.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402
from experiments import exit_status  # noqa: E402
from rldjax import errors, runtime  # noqa: E402  (before JAX starts: flags)

DEFAULT_CONFIG = "experiments/configs/cifar100_res32x4_res8x4.py:method=rld"


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=DEFAULT_CONFIG, help="config file[:args], as the launcher's")
  p.add_argument("--examples", default="50000,10000",
                 help="TRAIN,EVAL synthetic examples (CIFAR-100's sizes by default)")
  p.add_argument("--epochs", type=int, default=2, help="epochs to run (of the full schedule)")
  p.add_argument("--steps_per_call", type=int, default=None,
                 help="steps per device call (default: the config's)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--workdir", default=None, help="where the run goes (default: a temporary "
                 "directory, removed at the end)")
  p.add_argument("--compilation_cache", default=None,
                 help="a JAX persistent compilation cache directory (default: none)")
  p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
  args = p.parse_args(argv)
  if args.workdir is not None and not args.workdir.strip():
    p.error("--workdir: empty (an unset shell variable?); leave it out for a temporary one")
  for name in ("epochs", "steps_per_call", "batch"):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      p.error(f"--{name}: need at least 1, got {getattr(args, name)}")
  return args


def random_teacher(config, directory: str) -> str:
  """Exports a randomly initialised ``config.teacher.tag`` to ``directory``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from rldjax import export, models  # pylint: disable=import-outside-toplevel
  ds = config.dataset
  module = models.create(config.teacher.tag, ds.num_classes)
  shape = (1, ds.image_size, ds.image_size, 3)  # the models see RGB (gray is repeated)
  variables = jax.jit(lambda k: module.init(k, jnp.zeros(shape), train=False))(jax.random.key(0))
  export.save_model(directory, config.teacher.tag, variables, {"note": "random (benchmark)"},
                    num_classes=ds.num_classes)
  return directory


def run(args) -> dict:
  """Runs the loop; returns the figures printed."""
  from rldjax.train import loop  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from experiments import configs  # pylint: disable=import-outside-toplevel
  config = configs.load(args.config)
  config.dataset.name = f"synthetic:{args.examples}"
  if args.steps_per_call is not None:
    config.steps_per_call = args.steps_per_call
  if args.batch is not None:
    config.batch_size = args.batch
  if args.workdir and os.path.exists(os.path.join(args.workdir, "run")):
    # A resumed run would mix two sessions' start-ups and compilations into the figures.
    raise errors.WorkdirError(f"--workdir: {args.workdir} already holds a run; give a new "
                              "directory")
  base = args.workdir or tempfile.mkdtemp(prefix="rldjax_schedule_")
  try:
    if config.method != "vanilla":
      config.teacher.checkpoint = random_teacher(config, os.path.join(base, "teacher"))
    result = loop.train_and_evaluate(config, os.path.join(base, "run"),
                                     stop_after_epochs=args.epochs)
  finally:
    if args.workdir is None:
      shutil.rmtree(base, ignore_errors=True)
  epochs = result["epochs_completed"]
  train_examples = int(args.examples.split(",")[0])
  images = result["history"][-1]["step"] * config.batch_size  # steps of whole batches
  wall, steps, compile_s = result["wall_time_s"], result["train_time_s"], result["compile_time_s"]
  per_epoch = (wall - compile_s) / epochs
  return {
      "backend": jax.default_backend(), "devices": jax.device_count(),
      "student": config.student.tag, "teacher": config.teacher.tag if config.method != "vanilla"
      else None, "method": config.method, "batch": config.batch_size,
      "steps_per_call": config.steps_per_call, "epochs_run": epochs,
      "train_examples": train_examples, "images_per_s_in_steps": images / steps,
      "steps_s": steps, "share_in_steps": steps / max(wall - compile_s, 1e-9),
      "compile_s": compile_s, "wall_s": wall,
      "seconds_per_epoch": per_epoch, "schedule_epochs": config.num_epochs,
      "projected_schedule_s": compile_s + per_epoch * config.num_epochs,
  }


def main():
  runtime.reexec_with_huge_pages()
  args = parse()
  added = runtime.set_cpu_flags()
  runtime.import_tensorflow_without_keras()
  if args.compilation_cache:
    runtime.use_compilation_cache(args.compilation_cache)
  # A config, data size or workdir the run cannot use ends as the launcher ends:
  # ``error: <message>`` and the error's exit status, no traceback.
  figures = exit_status.exit_on_run_error(run, args)
  print(machine.describe())
  print(f"backend={figures['backend']} devices={figures['devices']} config={args.config} "
        f"student={figures['student']} teacher={figures['teacher']} batch={figures['batch']} "
        f"steps_per_call={figures['steps_per_call']} synthetic data {args.examples}; XLA flags "
        f"added: {added or 'none'}")
  print(f"  {figures['epochs_run']} epochs of {figures['train_examples']} images: "
        f"{figures['wall_s']:.1f} s wall, {figures['compile_s']:.1f} s of it compiling; "
        f"{figures['share_in_steps']:.0%} of the rest in steps")
  print(f"  in steps: {figures['images_per_s_in_steps']:.1f} img/s; "
        f"{figures['seconds_per_epoch']:.1f} s per epoch without compilation")
  print(f"  projected {figures['schedule_epochs']}-epoch schedule of {args.examples} examples: "
        f"{figures['projected_schedule_s'] / 60:.1f} min (compilation + "
        f"{figures['schedule_epochs']} x the measured epoch)")
  if args.json:
    print(json.dumps(figures))


if __name__ == "__main__":
  main()
