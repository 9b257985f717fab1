"""Exact top-k indices over a large class axis, in two small stages.

``jax.lax.top_k`` on XLA:CPU is a per-row partial sort whose cost grows with
the class count (about 360 ms for 4096 x 32000 rows, k = 7, on two cores).
:func:`top_k_indices` returns exactly the same indices, but runs the partial
sort on two short rows instead of one long one:

1. split the classes into blocks of ``G`` and take each block's maximum (one
   vectorised reduction);
2. the k blocks with the largest maxima, ties to the lower block, hold every
   top-k element: an element of any other block has k block maxima ranked
   ahead of it (larger, or equal and at a lower index);
3. run ``lax.top_k`` on those k * G candidates (plus the < G classes after the
   last full block), laid out in ascending class order so that its tie-break
   (lower index first) is the same as on the full row.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def block_size(num_classes: int, k: int) -> int | None:
  """The block size of the two-stage search, or None where one stage is cheaper.

  Both stages sort about C / G + k * G values per row, which is smallest at
  G = sqrt(C / k); G is rounded to a power of two in [8, 256]. Rows of fewer
  than 4 * k * G classes gain too little to pay for the extra stage
  (measured on XLA:CPU: 512 x 1000, k = 7 takes about 2 ms instead of 2.5).
  """
  g = 2 ** round(math.log2(max(math.sqrt(num_classes / k), 1.0)))
  g = min(max(g, 8), 256)
  return g if num_classes >= 4 * k * g else None


def _ascending(ids, k: int):
  """Rows of k distinct ints sorted ascending (a k x k rank count; k is small)."""
  position = jnp.sum(ids[:, None, :] < ids[:, :, None], axis=-1)  # [N, k]
  slots = position[:, :, None] == jnp.arange(k)  # [N, k (from), k (to)]
  return jnp.sum(jnp.where(slots, ids[:, :, None], 0), axis=1)


def top_k_indices(x, k: int):
  """Indices [N, k] of the k largest entries of each row of ``x`` [N, C].

  Identical to ``jax.lax.top_k(x, k)[1]``: decreasing value, ties to the
  lower index. Not differentiable (the indices are integers); pass
  ``stop_gradient``-ed values.
  """
  n, num_classes = x.shape
  g = block_size(num_classes, k)
  if g is None:
    return jax.lax.top_k(x, k)[1]
  full = num_classes // g * g
  # A strided window reduction: unlike slicing off the tail and reshaping, it
  # reads x in place.
  block_max = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, g), (1, g), "VALID")
  _, block_ids = jax.lax.top_k(block_max, k)  # [N, k]
  block_ids = _ascending(block_ids, k)
  candidate_ids = (block_ids[:, :, None] * g + jnp.arange(g)).reshape(n, k * g)
  if full < num_classes:  # the tail holds the highest indices: append it last
    tail_ids = jnp.broadcast_to(jnp.arange(full, num_classes), (n, num_classes - full))
    candidate_ids = jnp.concatenate([candidate_ids, tail_ids], axis=-1)
  candidates = jnp.take_along_axis(x, candidate_ids, axis=-1)
  _, picked = jax.lax.top_k(candidates, k)
  return jnp.take_along_axis(candidate_ids, picked, axis=-1)
