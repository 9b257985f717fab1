"""Launches one experiment: flags only; the work is in rldjax.train.loop.

  python -m experiments.train \
      --config=experiments/configs/cifar100_res32x4_res8x4.py:method=rld,seed=0 \
      --workdir=runs/cifar100/res32x4_res8x4/rld/seed0 [--config.optimizer.lr=0.1]

Every config field can be overridden with ``--config.<field>=<value>``; a
field that does not exist, or a value the run cannot use, stops the launch
before any data or teacher is loaded, naming the field.

Multi-process (one process per host, or several on one machine): give every
process the same command plus ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I``; or ``--config.distributed=True`` alone to
let JAX detect the cluster (TPU pod slices, SLURM, MPI). See the README.

Exit status: 0 finished, 1 flag errors (an empty --workdir included), 2 a
run that cannot start (config, data, teacher, workdir; multi-process flags
JAX cannot start with, such as a coordinator port in use on process 0's
host; processes that do not all connect within --initialization_timeout),
3 diverged, 4 storage failed (a file the run cannot write: fix it, rerun to
resume), 130 interrupted by Ctrl-C or SIGINT (after saving a checkpoint once
training has begun; at once during start-up), 143 stopped by SIGTERM after
saving a checkpoint (rerun to resume).
"""
import os
import re
import sys

if __name__ == "__main__":  # before the slower imports below
  from experiments import start_up
  start_up.begin()  # Ctrl-C's start-up handler; the restart with huge pages

from absl import app, flags, logging  # pylint: disable=wrong-import-position
from ml_collections import config_flags

from experiments import configs
from rldjax.errors import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file[:args]",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, results.json)")
flags.DEFINE_string("coordinator_address", None,
                    "multi-process: HOST:PORT of process 0's coordinator (with --num_processes "
                    "and --process_id)")
flags.DEFINE_integer("num_processes", None, "multi-process: how many processes take part")
flags.DEFINE_integer("process_id", None, "multi-process: this process's index, 0..N-1")
flags.DEFINE_integer("initialization_timeout", 300,
                     "multi-process: seconds each process waits for all of them to connect to "
                     "the coordinator before it stops (status 2)", lower_bound=1)
flags.DEFINE_integer("heartbeat_timeout", 100,
                     "multi-process: seconds without a heartbeat after which JAX takes a process "
                     "for dead (frozen, or its host gone) and aborts the others", lower_bound=1)
flags.DEFINE_string("compilation_cache", None,
                    "JAX persistent compilation cache directory (default $RLDJAX_CACHE_DIR or "
                    "~/.cache/rldjax/jax); 'none' turns it off")
flags.mark_flags_as_required(["config", "workdir"])
flags.register_validator(
    "workdir", lambda value: value is None or bool(value.strip()),
    "empty (an unset shell variable?): the run would write into the current directory; "
    "pass the run's directory")


def _unknown_override(argv):
  """(flag, message) for the first ``--config.<path>`` naming no config field."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  try:
    config = configs.load(spec)
  except Exception:  # pylint: disable=broad-except
    return None  # the config flag itself will report its own error
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
      parent = "config" + "".join(f".{p}" for p in parts[:depth])
      if not hasattr(node, "keys"):
        return arg, (f"config.{path}: no such field; {parent} is not a group of fields "
                     f"(it holds {node!r})")
      if part not in node:
        fields = ", ".join(sorted(node.keys()))
        hint = ""
        if parent == "config.loss":
          hint = f" (the hyperparameters of method {config.method!r})"
        missing = f"{parent}.{part}"
        return arg, (f"{missing}: no such field; {parent} has: {fields or '(nothing)'}"
                     f"{hint}")
      node = node[part]
  return None


def _config_string_error(err) -> str | None:
  """``--config=SPEC: <message>`` when ``err`` is ml_collections' report of a
  config file that raised an rldjax error (a bad config-string argument): its
  message without the traceback ml_collections embeds in it."""
  text = str(err)
  last = (text.strip().splitlines() or [""])[-1]
  prefix = f"{ConfigError.__module__}."
  if "Error whilst parsing config file" not in text or not last.startswith(prefix):
    return None
  flag = re.match(r"flag (--\S+?): Error whilst parsing", text)
  return f"{flag.group(1) if flag else '--config'}: {last.split(': ', 1)[-1]}"


def _unreadable_config_file() -> str | None:
  """The error of a ``--config`` file that could not be loaded (ml_collections
  defers it to the config's first use, as a traceback), or None."""
  spec = config_flags.get_config_filename(FLAGS["config"])
  path = spec.split(":", 1)[0]  # without the config string
  if os.path.isfile(path) and os.access(path, os.R_OK):
    return None
  return f"--config={spec}: no readable config file {path!r}"


def parse_flags(argv):
  """absl's flag parsing, with a clear error for a --config.<path> that names no field."""
  try:
    remaining = FLAGS(argv)
    missing = _unreadable_config_file()
    if missing is None:
      return remaining
    sys.stderr.write(f"FATAL Flags parsing error: {missing}\n")
  except flags.Error as err:
    sys.stderr.write(f"FATAL Flags parsing error: {_config_string_error(err) or err}\n")
  except (AttributeError, KeyError) as err:  # ml_collections: an unknown field or group
    unknown = _unknown_override(argv)
    if unknown is None and isinstance(err, KeyError):
      raise  # not an override naming no field: its traceback says more than its key
    message = f"{unknown[0]}: {unknown[1]}" if unknown else str(err)
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from experiments import exit_status  # pylint: disable=import-outside-toplevel
  exit_status.exit_on_run_error(
      run, FLAGS.config, FLAGS.workdir,
      on_interrupt="the same command resumes the run from its last checkpoint (or starts it "
      "again if it wrote none)")
  exit_status.ignore_interrupts_from_now()  # finished: a late Ctrl-C does not change status 0


def run(config, workdir):
  from rldjax import distributed, runtime  # pylint: disable=import-outside-toplevel
  added = runtime.set_cpu_flags()  # before JAX's backend starts
  runtime.import_tensorflow_without_keras()  # whenever the data path imports it
  from rldjax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  config_lib.validate(config)  # before any device, data or teacher is touched
  if FLAGS.compilation_cache != "none":
    runtime.use_compilation_cache(FLAGS.compilation_cache)
  explicit = any(v is not None for v in (FLAGS.coordinator_address, FLAGS.num_processes,
                                         FLAGS.process_id))
  if explicit or config.distributed:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.initialization_timeout, FLAGS.heartbeat_timeout)
  import jax  # pylint: disable=import-outside-toplevel
  from rldjax.train import loop  # pylint: disable=import-outside-toplevel
  logging.info("process %d/%d, %d devices (%s); XLA flags added: %s; GLIBC_TUNABLES: %s",
               jax.process_index(), jax.process_count(), jax.device_count(),
               jax.default_backend(), added or "none", os.environ.get("GLIBC_TUNABLES", "none"))
  loop.train_and_evaluate(config, os.path.abspath(workdir))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
