"""The streaming tf.data path (ImageNet, image folders): datasets that do not
fit in memory, decoded and augmented on the host.

* Training: each process reads its own equal share
  (``tfds.even_splits(split, n=process_count, drop_remainder=True)``, or a
  sharded stream for image folders), so every host runs the same number of
  steps. An image folder's TFDS slices (``train[:90%]``) are read here:
  ``tfds.ImageFolder`` reads whole splits only. The share's files are
  reshuffled every epoch (prepared datasets) and its examples shuffled in a
  buffer that holds them still encoded (decoding comes after it); epoch ``e``
  is a pure function of (seed, e), and ``start_step`` skips the batches
  already trained on before their images are decoded. The pipeline's
  threads (``host_threads``, 0: as many as the host has cores) change
  nothing in the batches.
* Evaluation: each process reads its share without dropping anything, batches
  are padded to the same count on every host, and ``mask`` marks the real
  examples, so every example is counted exactly once.
* An example that cannot be read or decoded (a truncated image file) stops
  the run with a :class:`~rldjax.errors.DataError` naming the dataset and
  split and, for an image folder, the files that do not decode (found by
  decoding the split's files one by one after the failure, for at most
  ``UNDECODABLE_SCAN_SECONDS``): tf.data's own error names neither.

Datasets that fit in memory (CIFAR, the digits) take the in-memory path
instead (``rldjax.data.in_memory``, ``rldjax.data.order``,
``rldjax.data.augment``), whose batches do not depend on the process count.
"""
from __future__ import annotations

import math
import re
import time
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from rldjax.data import builders
from rldjax.data.preprocessing import make_preprocess
from rldjax.errors import DataError

# How long a failed read may spend looking for the image files that do not decode.
UNDECODABLE_SCAN_SECONDS = 120.0


def keep_tensorflow_on_host() -> None:
  """Hides GPUs from TensorFlow, which only feeds the host (JAX owns the
  accelerators). Called when a pipeline is built, not at import; a no-op once
  TensorFlow has initialised its devices."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialised: nothing to change any more
    pass


def _process_dataset(builder, split: str, drop_remainder: bool,
                     file_seed: int | None = None, decode: bool = True) -> tf.data.Dataset:
  """This process's share of ``split``: equal shares (``drop_remainder``) for
  training, every example exactly once over all processes for evaluation.
  ``file_seed`` shuffles the order of the split's files (deterministically;
  training passes a new seed every epoch). Without ``decode``, images stay
  encoded (:func:`decode_image` decodes them as TFDS would)."""
  count, index = jax.process_count(), jax.process_index()
  if isinstance(builder, tfds.ImageFolder):  # no even_splits: shard the stream
    ds = image_folder_dataset(builder, split, decode=decode)
    if drop_remainder:
      ds = ds.take(num_examples(builder, split) // count * count)
    return ds.shard(count, index)
  sub = tfds.even_splits(split, n=count, drop_remainder=drop_remainder)[index]
  decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
  if file_seed is None:
    return builder.as_dataset(split=sub, shuffle_files=False, decoders=decoders)
  return builder.as_dataset(split=sub, shuffle_files=True, decoders=decoders,
                            read_config=tfds.ReadConfig(shuffle_seed=file_seed))


def decode_image(builder, encoded):
  """An image left encoded by ``decode=False``, decoded by the dataset's own
  image feature: the pixels TFDS's default decoding gives."""
  return builder.info.features["image"].decode_example(encoded)


def image_folder_dataset(builder, split: str, decode: bool = True) -> tf.data.Dataset:
  """``split`` of an image folder as ``tfds.ImageFolder.as_dataset`` gives it
  ({image, label, image/filename}, image undecoded unless ``decode``), with
  TFDS slicing (``train[:90%]``, ``train[90%:]+test``), which the folder's
  own reader refuses; files outside the slice are not read."""
  examples = builders.image_folder_examples(builder, split)
  label_feature = builder.info.features["label"]
  paths = [path for path, _ in examples]
  labels = np.array([label_feature.str2int(label) for _, label in examples], np.int64)
  image_feature = builder.info.features["image"]

  def load(path, label):
    image = tf.io.read_file(path)
    return {"image": image_feature.decode_example(image) if decode else image,
            "label": label, "image/filename": path}

  ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), labels))
  return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def num_examples(builder, split: str) -> int:
  """From the split metadata; counted by reading when a builder has none
  (as under ``tfds.testing.mock_data``)."""
  known = builders.num_examples(builder, split)
  if known is not None:
    return known
  return int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))


def steps_per_epoch(builder, split: str, global_batch: int) -> int:
  """Identical on every host: the per-process share is equal by construction."""
  local = num_examples(builder, split) // jax.process_count()
  return local // (global_batch // jax.process_count())


def _options(host_threads: int):
  """Deterministic order (whatever the threads: every random op is seeded per
  example); ``host_threads`` > 0 caps the pipeline's threads, 0 leaves tf.data
  a pool sized to the host's cores."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = host_threads
  return options


def train_batches(builder, split: str, *, global_batch: int, epoch: int, seed: int,
                  image_size: int, start_step: int = 0, shuffle_buffer: int = 16_384,
                  host_threads: int = 0) -> Iterator[dict]:
  """Local numpy batches {image, label} of one training epoch (0-based).

  The shuffle buffer holds encoded images, which are decoded after it, and a
  resumed epoch (``start_step`` > 0) skips its first batches before they are
  decoded: the batches are the same as decoding first, for the memory of the
  encoded files and without decoding what a resumed run does not train on."""
  keep_tensorflow_on_host()
  local_batch = global_batch // jax.process_count()
  epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31))
  ds = _process_dataset(builder, split, drop_remainder=True, file_seed=epoch_seed,
                        decode=False)
  ds = ds.with_options(_options(host_threads)).enumerate()
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.skip(start_step * local_batch)
  preprocess = make_preprocess(train=True, image_size=image_size)

  def prepare(index, example):
    op_seed = tf.stack([tf.cast(epoch_seed, tf.int64), index])
    return {"image": preprocess(decode_image(builder, example["image"]), op_seed),
            "label": tf.cast(example["label"], tf.int32)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
  yield from numpy_batches(ds, builder, split)


def eval_batches(builder, split: str, *, global_batch: int, image_size: int,
                 host_threads: int = 0) -> Iterator[dict]:
  """Local numpy batches {image, label, mask}, the same count on every host."""
  keep_tensorflow_on_host()
  local_batch = global_batch // jax.process_count()
  total = num_examples(builder, split)
  steps = math.ceil(math.ceil(total / jax.process_count()) / local_batch)
  ds = _process_dataset(builder, split, drop_remainder=False)
  preprocess = make_preprocess(train=False, image_size=image_size)
  ds = ds.with_options(_options(host_threads)).map(
      lambda ex: {"image": preprocess(ex["image"], tf.zeros([2], tf.int64)),
                  "label": tf.cast(ex["label"], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch).prefetch(2)
  template = None
  count = 0
  for batch in numpy_batches(ds, builder, split):
    template = batch
    yield pad_batch(batch, local_batch)
    count += 1
  if template is None:
    raise ValueError(f"split {split!r} of {builder.name} is empty on process "
                     f"{jax.process_index()}")
  for _ in range(steps - count):
    yield pad_batch({k: v[:0] for k, v in template.items()}, local_batch)


def numpy_batches(ds: tf.data.Dataset, builder, split: str) -> Iterator[dict]:
  """``ds`` (read from ``split`` of ``builder``) as numpy batches; an example
  that cannot be read or decoded raises DataError (see
  :func:`unreadable_message`)."""
  try:
    yield from ds.as_numpy_iterator()
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
    logging.error("tf.data failed reading split %r of %s: %s", split, builder.name, err)
    raise DataError(unreadable_message(builder, split, err)) from err


def undecodable_images(builder, split: str,
                       budget_s: float = UNDECODABLE_SCAN_SECONDS) -> tuple[list[str], int, bool]:
  """The files of an image folder's ``split`` that its image feature cannot
  decode, found by decoding them one by one: ``(paths, files scanned, whether
  the scan covered the split)``; it stops after ``budget_s`` seconds."""
  feature = builder.info.features["image"]
  raw = image_folder_dataset(builder, split, decode=False)
  bad, scanned, start = [], 0, time.monotonic()
  for example in raw.as_numpy_iterator():
    if time.monotonic() - start > budget_s:
      return bad, scanned, False
    try:
      feature.decode_example(tf.constant(example["image"]))
    except tf.errors.InvalidArgumentError:
      bad.append(example["image/filename"].decode())
    scanned += 1
  return bad, scanned, True


def unreadable_message(builder, split: str, err: Exception) -> str:
  """What to tell the user when tf.data fails on an example of ``split``."""
  cause = (str(getattr(err, "message", err)).strip().splitlines() or [""])[0]
  cause = re.sub(r"\s*\[Op:.*$", "", re.sub(r"\{\{.*?\}\}\s*", "", cause)).split(": ")[-1]
  where = f"dataset {builder.name!r} split {split!r}"
  if not isinstance(builder, tfds.ImageFolder):
    return (f"{where}: an example cannot be read or decoded ({cause}). Its prepared files in "
            f"{builder.data_dir} may be damaged: delete that directory and prepare the dataset "
            "again (TFDS's download_and_prepare, or --config.dataset.download=True).")
  bad, scanned, complete = undecodable_images(builder, split)
  if bad:
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    scope = "" if complete else f" (the first {scanned} files scanned; there may be more)"
    return (f"{where}: {len(bad)} image file(s) cannot be decoded ({cause}){scope}: {listed}. "
            "Replace them with readable images, or remove them (a split with other examples "
            "is another experiment: use a new --workdir).")
  scope = "any of its files" if complete else f"the first {scanned} of its files"
  return (f"{where}: an example cannot be read or decoded ({cause}); decoding {scope} one by "
          "one found none that fails.")


def pad_batch(batch, size):
  """Pads a batch to ``size`` rows; ``mask`` marks the real ones."""
  n = len(batch["label"])
  out = {"mask": np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])}
  for key, value in batch.items():
    pad = np.zeros((size - n,) + value.shape[1:], value.dtype)
    out[key] = np.concatenate([value, pad])
  return out
