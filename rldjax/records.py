"""A run's records (results.json, history.json, config.json) as strict JSON
files: written atomically, read back as one JSON object.

No JAX import: the report (``experiments/report.py``) reads records without it.
"""
from __future__ import annotations

import json
import math
import os


def _finite(obj):
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {str(k): _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def write_json(path: str, obj) -> None:
  """Atomically writes ``obj`` as strict JSON (non-finite floats -> null); a
  failed write (a full disk) leaves ``path`` as it was and no temporary file."""
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(_finite(obj), f, indent=1, default=str, allow_nan=False)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_json_object(path: str) -> dict:
  """The JSON object in ``path``; ValueError when the file holds something
  else (damaged JSON, a list), OSError when it cannot be read."""
  with open(path) as f:
    obj = json.load(f)
  if not isinstance(obj, dict):
    raise ValueError(f"a JSON {type(obj).__name__}, not an object")
  return obj
