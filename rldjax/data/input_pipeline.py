"""The streaming tf.data path (ImageNet, image folders): datasets that do not
fit in memory, decoded and augmented on the host.

* Training: each process reads its own equal share
  (``tfds.even_splits(split, n=process_count, drop_remainder=True)``, or a
  sharded stream for image folders), so every host runs the same number of
  steps; the share's files are reshuffled every epoch and its examples
  shuffled in a buffer; epoch ``e`` is a pure function of (seed, e), and
  ``start_step`` skips batches already trained on.
* Evaluation: each process reads its share without dropping anything, batches
  are padded to the same count on every host, and ``mask`` marks the real
  examples, so every example is counted exactly once.

Datasets that fit in memory (CIFAR, the digits) take the in-memory path
instead (``rldjax.data.in_memory``, ``rldjax.data.order``,
``rldjax.data.augment``), whose batches do not depend on the process count.
"""
from __future__ import annotations

import math
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rldjax.data import builders
from rldjax.data.preprocessing import make_preprocess


def keep_tensorflow_on_host() -> None:
  """Hides GPUs from TensorFlow, which only feeds the host (JAX owns the
  accelerators). Called when a pipeline is built, not at import; a no-op once
  TensorFlow has initialised its devices."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialised: nothing to change any more
    pass


def _process_dataset(builder, split: str, drop_remainder: bool,
                     file_seed: int | None = None) -> tf.data.Dataset:
  """This process's share of ``split``: equal shares (``drop_remainder``) for
  training, every example exactly once over all processes for evaluation.
  ``file_seed`` shuffles the order of the split's files (deterministically;
  training passes a new seed every epoch)."""
  count, index = jax.process_count(), jax.process_index()
  if isinstance(builder, tfds.ImageFolder):  # no subsplit API: shard the stream
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if drop_remainder:
      ds = ds.take(num_examples(builder, split) // count * count)
    return ds.shard(count, index)
  sub = tfds.even_splits(split, n=count, drop_remainder=drop_remainder)[index]
  if file_seed is None:
    return builder.as_dataset(split=sub, shuffle_files=False)
  return builder.as_dataset(split=sub, shuffle_files=True,
                            read_config=tfds.ReadConfig(shuffle_seed=file_seed))


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


def _options():
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 2
  return options


def train_batches(builder, split: str, *, global_batch: int, epoch: int, seed: int,
                  image_size: int, start_step: int = 0,
                  shuffle_buffer: int = 16_384) -> Iterator[dict]:
  """Local numpy batches {image, label} of one training epoch (0-based)."""
  keep_tensorflow_on_host()
  local_batch = global_batch // jax.process_count()
  epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31))
  ds = _process_dataset(builder, split, drop_remainder=True, file_seed=epoch_seed)
  ds = ds.with_options(_options()).enumerate()
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  preprocess = make_preprocess(train=True, image_size=image_size)

  def prepare(index, example):
    op_seed = tf.stack([tf.cast(epoch_seed, tf.int64), index])
    return {"image": preprocess(example["image"], op_seed),
            "label": tf.cast(example["label"], tf.int32)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True).skip(start_step).prefetch(2)
  yield from ds.as_numpy_iterator()


def eval_batches(builder, split: str, *, global_batch: int, image_size: int) -> Iterator[dict]:
  """Local numpy batches {image, label, mask}, the same count on every host."""
  keep_tensorflow_on_host()
  local_batch = global_batch // jax.process_count()
  total = num_examples(builder, split)
  steps = math.ceil(math.ceil(total / jax.process_count()) / local_batch)
  ds = _process_dataset(builder, split, drop_remainder=False)
  preprocess = make_preprocess(train=False, image_size=image_size)
  ds = ds.with_options(_options()).map(
      lambda ex: {"image": preprocess(ex["image"], tf.zeros([2], tf.int64)),
                  "label": tf.cast(ex["label"], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch).prefetch(2)
  template = None
  count = 0
  for batch in ds.as_numpy_iterator():
    template = batch
    yield pad_batch(batch, local_batch)
    count += 1
  if template is None:
    raise ValueError(f"split {split!r} of {builder.name} is empty on process "
                     f"{jax.process_index()}")
  for _ in range(steps - count):
    yield pad_batch({k: v[:0] for k, v in template.items()}, local_batch)


def pad_batch(batch, size):
  """Pads a batch to ``size`` rows; ``mask`` marks the real ones."""
  n = len(batch["label"])
  out = {"mask": np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])}
  for key, value in batch.items():
    pad = np.zeros((size - n,) + value.shape[1:], value.dtype)
    out[key] = np.concatenate([value, pad])
  return out
