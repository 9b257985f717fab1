"""A run's data, on one of three paths (see :mod:`rldjax.train.programs`):

* ``device``: cifar/digits splits held on every device (default for those kinds),
* ``host``: the same splits held in host memory, batches gathered there by the
  same indices (``dataset.in_memory=False``; identical batches),
* ``stream``: ImageNet-style tf.data streaming (``dataset.kind="imagenet"``).

Labels are checked before training: a label outside ``[0, num_classes)``
stops the run naming the dataset, split and value.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rldjax import distributed
from rldjax.data import augment, builders, in_memory, order, synthetic
from rldjax.errors import ConfigError, DataError, RunError


@dataclasses.dataclass
class RunData:
  path: str                     # "device", "host" or "stream"
  steps_per_epoch: int
  num_train: int
  num_eval: int
  builder: Any = None
  train: tuple | None = None    # host arrays (images uint8, labels int32)
  eval: tuple | None = None
  device_train: tuple | None = None   # replicated device arrays
  device_eval: tuple | None = None
  # What identifies the examples (recorded in the workdir, compared between
  # processes): each split's example count, and on the in-memory paths the
  # CRC-32 of its arrays; streaming reads no content for this: the dataset's
  # TFDS name and version and a CRC-32 of each split's listing
  # (builders.split_listing: an image folder's file names and labels, a
  # prepared dataset's slices of its splits and their recorded byte sizes).
  inputs: dict = dataclasses.field(default_factory=dict)


def load(config, mesh) -> RunData:
  """Opens the dataset (process 0 prepares it) and loads what the path needs."""
  ds = config.dataset
  if synthetic.is_synthetic(ds.name):
    train, evaluation = synthetic.splits(ds.name, ds.kind, ds.image_size, ds.num_classes)
    return _in_memory(config, mesh, train, evaluation, _split_checksums(ds, train, evaluation))
  builder = builders.load_builder(ds.name, ds.data_dir or None, ds.download)
  # Each process reads its own copy (config.dataset.data_dir may differ): what
  # one process finds wrong stops every process, and in-memory copies must
  # hold the same examples (each process gathers its rows of every batch
  # from its own copy).
  read, error = None, None
  try:
    read = _read(config, builder)
  except RunError as err:
    error = err
  distributed.stop_if_any(error, f"reading dataset {ds.name!r}")
  if isinstance(read, RunData):  # streaming
    # Its content is not checksummed (too large): its version and listing count too.
    read.inputs = {"dataset (TFDS name/version)": builder.info.full_name,
                   **_split_counts(ds, read.num_train, read.num_eval),
                   **_split_listings(ds, builder)}
    distributed.check_same_as_primary(
        f"comparing this process's copy of dataset {ds.name!r} with process 0's",
        read.inputs)
    return read
  train, evaluation = read
  checksums = _split_checksums(ds, train, evaluation)
  distributed.check_same_as_primary(
      f"comparing this process's copy of dataset {ds.name!r} with process 0's (with "
      "config.dataset.data_dir different on each, every copy must hold the same examples)",
      checksums)
  return _in_memory(config, mesh, train, evaluation, checksums, builder)


def _split_counts(ds, num_train: int, num_eval: int) -> dict:
  return {f"train split {ds.train_split!r} (examples)": num_train,
          f"eval split {ds.eval_split!r} (examples)": num_eval}


def _split_listings(ds, builder) -> dict:
  """The CRC-32 of the two streamed splits' listings (none under mock_data)."""
  listings = {f"{role} split {split!r} (listing CRC-32)": builders.split_listing(builder, split)
              for role, split in (("train", ds.train_split), ("eval", ds.eval_split))}
  return {key: value for key, value in listings.items() if value is not None}


def _split_checksums(ds, train, evaluation) -> dict:
  """The example counts and CRC-32 of the two in-memory splits (host arrays)."""
  return {**_split_counts(ds, len(train[1]), len(evaluation[1])),
          f"train split {ds.train_split!r} (CRC-32)": distributed.fingerprint(train),
          f"eval split {ds.eval_split!r} (CRC-32)": distributed.fingerprint(evaluation)}


def _read(config, builder) -> RunData | tuple:
  """What this process reads of ``builder``: the streaming path's RunData, or
  the in-memory splits as host arrays ``(train, eval)``, each (images, labels)."""
  ds = config.dataset
  declared = builders.declared_num_classes(builder)
  if declared is not None and declared > ds.num_classes:
    raise DataError(f"dataset {ds.name!r} split {ds.train_split!r}: its labels take {declared} "
                    f"values (0..{declared - 1}) but config.dataset.num_classes is "
                    f"{ds.num_classes}")
  builders.check_split(builder, ds.train_split, "config.dataset.train_split")
  builders.check_split(builder, ds.eval_split, "config.dataset.eval_split")
  if ds.kind == "imagenet":
    from rldjax.data import input_pipeline  # pylint: disable=import-outside-toplevel
    spe = input_pipeline.steps_per_epoch(builder, ds.train_split, config.batch_size)
    return RunData("stream", spe, input_pipeline.num_examples(builder, ds.train_split),
                   input_pipeline.num_examples(builder, ds.eval_split), builder=builder)
  if ds.kind not in augment.KINDS:
    raise ConfigError(f"config.dataset.kind: {ds.kind!r} has no in-memory path")
  splits = {}
  for name in (ds.train_split, ds.eval_split):
    images, labels = in_memory.load_split(builder, name)
    splits[name] = (images, in_memory.check_labels(labels, ds.num_classes, ds.name, name))
  return splits[ds.train_split], splits[ds.eval_split]


def _in_memory(config, mesh, train, evaluation, inputs, builder=None) -> RunData:
  """The ``device`` or ``host`` path's data of the two splits (host arrays)."""
  ds = config.dataset
  spe = order.steps_per_epoch(len(train[1]), config.batch_size)
  data = RunData("device" if ds.in_memory else "host", spe, len(train[1]), len(evaluation[1]),
                 builder=builder, train=train, eval=evaluation, inputs=inputs)
  if ds.in_memory:
    data.device_train = distributed.replicate(mesh, train)
    data.device_eval = distributed.replicate(mesh, evaluation)
  return data


def local_rows(mesh, global_batch: int) -> slice:
  """The rows of a global batch that this process's devices hold (they are
  contiguous in the mesh)."""
  per_device = global_batch // mesh.devices.size
  positions = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
  if positions != list(range(positions[0], positions[-1] + 1)):
    raise RuntimeError("this process's devices are not contiguous in the mesh")
  return slice(positions[0] * per_device, (positions[-1] + 1) * per_device)


def host_train_batches(data: RunData, mesh, global_batch: int, data_key, epoch: int,
                       start_step: int) -> Iterator[dict]:
  """This process's raw batches {image uint8, label, index} of ``epoch``
  (0-based) from ``start_step``: the device path's batches, gathered on the host."""
  images, labels = data.train
  perm = np.asarray(jax.device_get(order.epoch_permutation(data_key, epoch, len(labels))))
  rows = local_rows(mesh, global_batch)
  for s in range(start_step, data.steps_per_epoch):
    idx = perm[s * global_batch:(s + 1) * global_batch][rows]
    yield {"image": images[idx], "label": labels[idx], "index": idx.astype(np.int32)}


def host_eval_batches(data: RunData, mesh, global_batch: int) -> Iterator[dict]:
  """This process's raw evaluation batches {image, label, mask}, of the sizes
  :func:`rldjax.data.order.eval_batch_sizes` gives (as the in-memory
  evaluation); padding rows have mask 0."""
  images, labels = data.eval
  n, start = len(labels), 0
  for size in order.eval_batch_sizes(n, global_batch, mesh.devices.size):
    idx = np.arange(start, start + size)[local_rows(mesh, size)]
    start += size
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    yield {"image": images[idx], "label": labels[idx], "mask": mask}


def to_global(batches: Iterator[dict], mesh, prefetch: int = 2) -> Iterator[dict]:
  """Local numpy batches -> global arrays sharded over ``'data'``, kept
  ``prefetch`` batches ahead so the host overlaps with the device."""
  sharding = NamedSharding(mesh, P("data"))
  queue = collections.deque()

  def put(batch):
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def check_batch_labels(labels, num_classes: int, dataset: str, split: str) -> None:
  """Streaming path: a label outside [0, num_classes) stops the run."""
  labels = np.asarray(labels)
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    raise DataError(f"dataset {dataset!r} split {split!r}: label {int(labels[bad][0])} is "
                    f"outside [0, {num_classes}) (config.dataset.num_classes)")
