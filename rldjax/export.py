"""Exported models: a model's variables plus what is needed to rebuild it.

Layout of an export directory::

  DIR/model.json     {"tag": ..., "num_classes": ..., and e.g. "epoch", "top1"}
  DIR/variables/     Orbax checkpoint of {"params", "batch_stats"}

Written by the PyTorch converter and by every training run (the best and the
last model), and read by the trainer to load a teacher. Only finite weights
are written or accepted. In a multi-process run every process calls
:func:`save_model` (the Orbax save is a collective); process 0 writes the files.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rldjax.convert import classifier_name
from rldjax.errors import TeacherError


def _nonfinite_leaves(tree) -> list[str]:
  return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if not np.all(np.isfinite(np.asarray(leaf)))]


def save_model(directory: str, tag: str, variables: dict[str, Any],
               metadata: dict | None = None) -> None:
  """Writes ``variables`` of zoo model ``tag``; ``metadata`` goes into model.json."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, "model.json")):
    raise FileExistsError(f"{directory} already holds an exported model")
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  tree = jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
  bad = _nonfinite_leaves(tree)
  if bad:
    raise ValueError(f"refusing to export non-finite weights to {directory}: {', '.join(bad[:5])}")
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(os.path.join(directory, "variables"), tree)
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()
  num_classes = int(np.shape(tree["params"][classifier_name(tag)]["bias"])[0])
  if jax.process_index() == 0:  # model.json last: its presence marks a complete export
    with open(os.path.join(directory, "model.json"), "w") as f:
      json.dump({"tag": tag, "num_classes": num_classes, **(metadata or {})}, f)


def read_metadata(directory: str) -> dict:
  """model.json of an export directory."""
  meta_path = os.path.join(os.path.abspath(directory), "model.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(
        f"{os.path.abspath(directory)} is not an exported rldjax model (no model.json). "
        "Export one with `python -m rldjax.convert` or use a training run's "
        "<workdir>/export/last.")
  with open(meta_path) as f:
    return json.load(f)


def load_model(directory: str) -> tuple[str, int, dict[str, Any]]:
  """Returns (tag, num_classes, variables) of an export directory; weights that
  are not finite raise TeacherError naming the directory and the entries."""
  directory = os.path.abspath(directory)
  meta = read_metadata(directory)
  checkpointer = ocp.StandardCheckpointer()
  try:
    variables = checkpointer.restore(os.path.join(directory, "variables"))
  finally:
    checkpointer.close()
  bad = _nonfinite_leaves(variables)
  if bad:
    raise TeacherError(f"{directory} holds non-finite weights ({len(bad)} tensors, e.g. "
                       f"{', '.join(bad[:3])}); it cannot be used as a model")
  return meta["tag"], int(meta["num_classes"]), variables
