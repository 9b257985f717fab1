"""Launches one experiment: flags only; the work is in rldjax.train.loop.

  python -m experiments.train \
      --config=experiments/configs/cifar100_res32x4_res8x4.py:method=rld,seed=0 \
      --workdir=runs/cifar100/res32x4_res8x4/rld/seed0 [--config.optimizer.lr=0.1]

Every config field can be overridden with ``--config.<field>=<value>``; a
field that does not exist, or a value the run cannot use, stops the launch
before any data or teacher is loaded, naming the field.
"""
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file[:args]",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, results.json)")
flags.mark_flags_as_required(["config", "workdir"])


def _load_config_file(spec: str):
  """The config that ``--config=path[:args]`` names, loaded as config_flags does."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_rldjax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _unknown_override(argv):
  """(flag, message) for the first ``--config.<path>`` naming no config field."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  try:
    config = _load_config_file(spec)
  except Exception:  # pylint: disable=broad-except
    return None  # the config flag itself will report its own error
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        parent = "config" + "".join(f".{p}" for p in parts[:depth])
        fields = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
        hint = ""
        if parent == "config.loss":
          hint = f" (the hyperparameters of method {config.method!r})"
        return arg, (f"config.{path}: no such field; {parent} has: {fields or '(nothing)'}"
                     f"{hint}")
      node = node[part]
  return None


def parse_flags(argv):
  """absl's flag parsing, with a clear error for a --config.<path> that names no field."""
  try:
    return FLAGS(argv)
  except flags.Error as err:
    sys.stderr.write(f"FATAL Flags parsing error: {err}\n")
  except AttributeError as err:
    unknown = _unknown_override(argv)
    message = f"{unknown[0]}: {unknown[1]}" if unknown else str(err)
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rldjax import errors  # pylint: disable=import-outside-toplevel
  try:
    run(FLAGS.config, FLAGS.workdir)
  except errors.RunError as err:
    logging.error("%s: %s", type(err).__name__, err)
    sys.stderr.write(f"error: {err}\n")
    sys.exit(err.exit_code)


def run(config, workdir):
  from rldjax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  config_lib.validate(config)  # before any device, data or teacher is touched
  import jax  # pylint: disable=import-outside-toplevel
  if config.distributed:
    jax.distributed.initialize()
  from rldjax.train import loop  # pylint: disable=import-outside-toplevel
  logging.info("process %d/%d, %d devices", jax.process_index(), jax.process_count(),
               jax.device_count())
  loop.train_and_evaluate(config, os.path.abspath(workdir))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
