"""Experiment configs: each module's ``get_config(arg)`` returns one
(``experiments/train.py --config=experiments/configs/<file>.py:<args>``)."""
import importlib.util


def load(spec: str):
  """The config that ``path[:args]`` names, loaded as ``--config`` loads it
  (``get_config(args)``, or ``get_config()`` without args)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_rldjax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
