"""Datasets that fit in memory (CIFAR-100 is 150 MB of uint8; the digits 100 kB).

A split is read once from TFDS into a uint8 image array and an int32 label
array. The first read goes through TensorFlow; the arrays are then cached as
``<builder data dir>/rldjax_arrays/<split>.npz`` (written atomically, when the
directory is writable), so later runs start without importing TensorFlow. A
cache that cannot be read back (a damaged file: the zip members' CRC-32 no
longer match) is ignored with a warning and written again from TFDS; prepared
TFDS files that cannot be read stop the run with a DataError naming the
dataset and split.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import zipfile

import numpy as np
from absl import logging

from rldjax.errors import DataError


def _cache_path(builder, split: str) -> str | None:
  """Beside the prepared dataset, whose files are the source of truth (None
  when there are none, e.g. under ``tfds.testing.mock_data``)."""
  data_dir = getattr(builder, "data_dir", None)
  if not data_dir or not os.path.exists(os.path.join(str(data_dir), "dataset_info.json")):
    return None
  safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", split)
  if safe != split:
    safe += "-" + hashlib.sha1(split.encode()).hexdigest()[:8]
  return os.path.join(str(data_dir), "rldjax_arrays", f"{safe}.npz")


def _read_tfds(builder, split: str):
  from rldjax.data.input_pipeline import (  # pylint: disable=import-outside-toplevel
      keep_tensorflow_on_host, numpy_batches)
  keep_tensorflow_on_host()
  ds = builder.as_dataset(split=split, shuffle_files=False).batch(4096)
  images, labels = [], []
  for batch in numpy_batches(ds, builder, split):
    images.append(np.asarray(batch["image"], np.uint8))
    labels.append(np.asarray(batch["label"], np.int64))
  images, labels = np.concatenate(images), np.concatenate(labels)
  if images.ndim == 3:
    images = images[..., None]
  return images, labels


def load_split(builder, split: str, use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W, C], labels int64 [N]) of ``split``, in TFDS order."""
  path = _cache_path(builder, split) if use_cache else None
  if path and os.path.exists(path):
    try:
      with np.load(path) as cached:
        return cached["images"], cached["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
      logging.warning("ignoring unreadable array cache %s (%s); reading the split again",
                      path, err)
  images, labels = _read_tfds(builder, split)
  if path:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp.npz"  # one per writer
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.savez(tmp, images=images, labels=labels)
      os.replace(tmp, path)
    except OSError as err:  # a read-only or full dataset directory: no cache, still correct
      logging.info("not caching %s: %s", path, err)
      if os.path.exists(tmp):  # a full disk: leave no partial copy behind
        os.remove(tmp)
  return images, labels


def check_labels(labels, num_classes: int, dataset: str, split: str) -> np.ndarray:
  """int32 labels, or a DataError naming the dataset, split and first bad value."""
  labels = np.asarray(labels)
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise DataError(
        f"dataset {dataset!r} split {split!r}: label {int(labels[i])} of example {i} is outside "
        f"[0, {num_classes}) ({bad.size} such labels); config.dataset.num_classes is "
        f"{num_classes}")
  return labels.astype(np.int32)
