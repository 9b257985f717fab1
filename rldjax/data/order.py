"""The training order: which examples form the global batch at each step.

Epoch ``e`` (0-based) visits the split in the order of a permutation drawn
from the run's data key and ``e``; the global batch at step ``s`` of the epoch
is ``perm[s·B : (s+1)·B]`` (the last incomplete batch is dropped), and device
``d`` of the ``'data'`` mesh axis takes rows ``[d·b, (d+1)·b)`` of it,
``b = B / devices``. Every quantity is a pure function of (seed, epoch, step),
so a resumed run sees the batches an uninterrupted one would, and the global
batch is the same however many processes and devices share it.

Keys use the ``threefry2x32`` PRNG, whose values are the same on every
backend, so a host computing the order (the host-fed path) and a device
computing it inside a jitted step agree bit for bit.
"""
from __future__ import annotations

import jax

KEY_IMPL = "threefry2x32"
_DATA_STREAM = 0x0DA7A  # separates the data key from the parameter-init key
_ORDER, _AUGMENT = 0, 1   # sub-streams of the data key


def data_key_data(seed: int) -> jax.Array:
  """The run's data key as raw uint32[2] key data (checkpoint- and jit-friendly)."""
  key = jax.random.fold_in(jax.random.key(seed, impl=KEY_IMPL), _DATA_STREAM)
  return jax.random.key_data(key)


def _key(key_data):
  return jax.random.wrap_key_data(key_data, impl=KEY_IMPL)


def epoch_permutation(key_data, epoch, num_examples: int):
  """The order of epoch ``epoch`` (0-based) over ``num_examples`` examples."""
  order = jax.random.fold_in(_key(key_data), _ORDER)
  return jax.random.permutation(jax.random.fold_in(order, epoch), num_examples)


def example_keys(key_data, epoch, indices):
  """One augmentation key per example, from (data key, epoch, example index):
  an example is augmented the same way whichever batch, device or process
  it lands on."""
  epoch_key = jax.random.fold_in(jax.random.fold_in(_key(key_data), _AUGMENT), epoch)
  return jax.vmap(lambda i: jax.random.fold_in(epoch_key, i))(indices)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return num_examples // global_batch


def batch_indices(perm, step_in_epoch, global_batch: int, first_row, rows: int):
  """Example indices of rows ``[first_row, first_row + rows)`` of the global
  batch at ``step_in_epoch``."""
  start = step_in_epoch * global_batch + first_row
  return jax.lax.dynamic_slice_in_dim(perm, start, rows)


def eval_batch_sizes(num_examples: int, global_batch: int, num_devices: int) -> list[int]:
  """Global batch sizes that cover an evaluation split once, in order: full
  batches of ``global_batch``, then one batch for the remainder rounded up to
  a multiple of ``num_devices`` (its extra rows are padding, masked out).
  Batch ``i`` starts at example ``sum(sizes[:i])``."""
  full, rest = divmod(num_examples, global_batch)
  return [global_batch] * full + ([-(-rest // num_devices) * num_devices] if rest else [])
