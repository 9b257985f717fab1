"""Exported models: a model's variables plus what is needed to rebuild it.

Layout of an export directory::

  DIR/model.json       {"tag": ..., "num_classes": ..., and e.g. "epoch", "top1"}
  DIR/variables.npz    every array of {"params", "batch_stats"}, named by its
                       path ("params/layer1/0/conv1/kernel"), uncompressed

A plain ``.npz`` (readable with ``numpy.load`` alone, no JAX or Orbax version
coupling, ~1 ms for a small model where an Orbax save costs ~50 ms). Written
by the PyTorch converter and by every training run (the best and the last
model), and read by the trainer to load a teacher. Exports written by rldjax
before the ``.npz`` layout (an Orbax checkpoint in ``DIR/variables/``) are
still read. Only finite weights are written or accepted. The variables of a
data-parallel run are replicated, so process 0 alone writes the files (other
processes return at once); ``model.json`` is written last and marks a
complete export.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Mapping

import jax
import numpy as np

from rldjax.convert import classifier_name
from rldjax.errors import TeacherError

VARIABLES_FILE = "variables.npz"
_SEP = "/"


def _nonfinite_leaves(tree) -> list[str]:
  return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if not np.all(np.isfinite(np.asarray(leaf)))]


def _flatten(tree, prefix="") -> dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    key = str(key)
    if _SEP in key:
      raise ValueError(f"variable name {key!r} contains {_SEP!r}")
    if isinstance(value, Mapping):  # dicts and flax FrozenDicts
      flat.update(_flatten(value, prefix + key + _SEP))
    else:
      flat[prefix + key] = np.asarray(value)
  return flat


def _unflatten(flat) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split(_SEP)
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def save_model(directory: str, tag: str, variables: dict[str, Any],
               metadata: dict | None = None, num_classes: int | None = None) -> None:
  """Writes ``variables`` of zoo model ``tag``; ``metadata`` goes into model.json.

  ``num_classes``: the model's number of classes where the caller built the
  model and knows it (the trainer); when None it is read from the shape of
  the classifier's bias, which needs one abstract trace of ``tag`` per
  process (~70 ms for a small network, once per process).
  """
  directory = os.path.abspath(directory)
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  tree = jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
  bad = _nonfinite_leaves(tree)
  if bad:
    raise ValueError(f"refusing to export non-finite weights to {directory}: {', '.join(bad[:5])}")
  if jax.process_index() != 0:  # process 0 writes; the others only check
    return
  if os.path.exists(os.path.join(directory, "model.json")):
    raise FileExistsError(f"{directory} already holds an exported model")
  if num_classes is None:
    num_classes = int(np.shape(tree["params"][classifier_name(tag)]["bias"])[0])
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, VARIABLES_FILE + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **_flatten(tree))
  os.replace(tmp, os.path.join(directory, VARIABLES_FILE))
  with open(os.path.join(directory, "model.json"), "w") as f:  # last: marks a complete export
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


def _read_variables(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, VARIABLES_FILE)
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as npz:
        tree = _unflatten({name: npz[name] for name in npz.files})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
      raise TeacherError(f"{path} cannot be read ({type(err).__name__}: {err}); export the "
                         "model again") from err
    if "params" not in tree:
      raise TeacherError(f"{path} holds no params/... arrays; export the model again")
    tree.setdefault("batch_stats", {})
    return tree
  if os.path.isdir(os.path.join(directory, "variables")):  # the earlier Orbax layout
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    checkpointer = ocp.StandardCheckpointer()
    try:
      return checkpointer.restore(os.path.join(directory, "variables"))
    finally:
      checkpointer.close()
  raise TeacherError(f"{directory} has a model.json but no {VARIABLES_FILE}: the export is "
                     "incomplete; export it again")


def load_model(directory: str) -> tuple[str, int, dict[str, Any]]:
  """Returns (tag, num_classes, variables) of an export directory; weights that
  are not finite raise TeacherError naming the directory and the entries."""
  directory = os.path.abspath(directory)
  meta = read_metadata(directory)
  variables = _read_variables(directory)
  bad = _nonfinite_leaves(variables)
  if bad:
    raise TeacherError(f"{directory} holds non-finite weights ({len(bad)} tensors, e.g. "
                       f"{', '.join(bad[:3])}); it cannot be used as a model")
  return meta["tag"], int(meta["num_classes"]), variables
