"""Orbax checkpoints of a run: the train state plus the run's history so far.

Each checkpoint holds two items, ``packed`` (the :class:`TrainState`) and
``history`` (the per-epoch evaluation records, JSON), so a resumed run gets
both from the same step. The state is stored packed: its leaves, in
``jax.tree_util`` flatten order, raveled and concatenated into one 1-D array
per dtype (:func:`pack`; :func:`unpack` with the abstract state gives the tree
back, bit for bit). Orbax's cost grows with the number of arrays, not their
size: saving and making durable the state of the digits student (133 arrays)
takes 115 ms per leaf and 22 ms packed, resnet8x4's (146 arrays, 15 MB)
107 vs 33 ms (``python benchmarks/checkpoint.py``). The state is replicated
(data parallel), and so are the packed arrays. Checkpoints written before
packing, with the tree as item ``state``, are still restored.

Each checkpoint also holds ``checksums`` (JSON): per packed array a
position-weighted sum of its 32-bit words, and a CRC-32 of the history, both
checked on restore. Orbax reads a checkpoint whose bytes changed on storage
(one flipped bit of its data file) without an error; the checksums make it a
corrupt checkpoint, handled as below. Checkpoints written before checksums
restore without the check.

The manager keeps the latest N checkpoints and the best N by test top-1
(``preservation_policy``), saves asynchronously, and is always closed. A
checkpoint that fails to restore is reported once, moved aside to
``<workdir>/checkpoints_corrupt/`` (never deleted, never used) and the next
older one is tried.

Runs in threads of one process (the demo's runs side by side): Orbax keeps
its operation ids process-wide, and two managers saving at once corrupt each
other's saves (FileExistsError, missing ``_sharding``, half-written
directories: four threads saving at once failed in three of four). So outside
the main thread every Orbax call here holds one process-wide lock and a save
is waited for before the lock is released. A run in the main thread (the
launcher) saves asynchronously, as above, when it is the only process. With
several processes saves are synchronous: when an asynchronous save failed on
one process (a full disk), every process waited in Orbax's barriers (20
minutes), where a synchronous one raises in the failing process's main thread
(``experiments/exit_status.py`` then ends it, and JAX's coordination service
its peers).
"""
from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
import shutil
import threading
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from rldjax import distributed

policies = ocp.checkpoint_managers


def quiet_orbax_logs() -> None:
  """Keeps Orbax's per-save INFO lines out of a run's log (warnings and errors stay)."""
  def drop_orbax_info(record) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname
  logger = logging.get_absl_logger()
  if not any(getattr(f, "__name__", "") == "drop_orbax_info" for f in logger.filters):
    logger.addFilter(drop_orbax_info)


def _packing(abstract_state):
  """({dtype name: packed size}, per leaf (dtype name, offset, size, shape), treedef)."""
  leaves, treedef = jax.tree_util.tree_flatten(abstract_state)
  offsets, layout = {}, []
  for leaf in leaves:
    name = np.dtype(leaf.dtype).name
    size = int(np.prod(leaf.shape, dtype=np.int64))
    layout.append((name, offsets.get(name, 0), size, tuple(leaf.shape)))
    offsets[name] = offsets.get(name, 0) + size
  return offsets, layout, treedef


def _pack(state) -> dict:
  groups = {}
  for leaf in jax.tree_util.tree_leaves(state):
    groups.setdefault(np.dtype(leaf.dtype).name, []).append(jnp.ravel(leaf))
  return {name: jnp.concatenate(parts) for name, parts in groups.items()}


@jax.jit
def pack(state) -> dict:
  """``{dtype name: 1-D array}``: every leaf of ``state`` raveled and
  concatenated, per dtype, in flatten order."""
  return _pack(state)


def _words(x):
  """The bits of 1-D ``x`` as uint32 words (64-bit values as two words)."""
  bits = np.dtype(x.dtype).itemsize * 8
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if bits == 32:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if bits < 32:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)


def _checksums(packed: dict) -> dict:
  r"""Per packed array, :math:`\sum_i w_i (2i + 1) \bmod 2^{32}` over its uint32
  words :math:`w_i`. Every odd factor is invertible modulo :math:`2^{32}`, so
  a change confined to one word (a flipped bit, one wrong value) always
  changes the sum; changes of several words cancel with probability
  :math:`\approx 2^{-32}`."""
  out = {}
  for name, x in packed.items():
    words = _words(x)
    odd = jnp.arange(words.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    out[name] = jnp.sum(words * odd, dtype=jnp.uint32)
  return out


@jax.jit
def _pack_with_checksums(state):
  packed = _pack(state)
  return packed, _checksums(packed)


_checksums_of_packed = jax.jit(_checksums)


def _history_checksum(history: list) -> int:
  return zlib.crc32(json.dumps(history, sort_keys=True).encode())


def unpack(packed: dict, abstract_state):
  """The tree of ``abstract_state``'s structure from :func:`pack`'s output,
  bit for bit, each leaf placed with its abstract leaf's sharding (if any).

  The packed arrays are replicated (as the state is), so each process cuts
  its own copy into leaves on the host (exact: views of the same bytes) and
  places them. A jitted split compiled one slice per leaf: 4.7 s for
  ImageNet's ResNet18 state on XLA:CPU, at every first resume of a config.
  """
  sizes, layout, treedef = _packing(abstract_state)
  for name, size in sizes.items():
    if name not in packed or packed[name].shape != (size,):
      raise ValueError(f"packed state holds {name}{getattr(packed.get(name), 'shape', None)}, "
                       f"expected ({size},)")
  host = {name: _host_copy(name, packed[name]) for name in sizes}
  leaves = []
  for (name, offset, size, shape), like in zip(layout, jax.tree_util.tree_leaves(abstract_state)):
    value = host[name][offset:offset + size].reshape(shape)
    sharding = getattr(like, "sharding", None)
    leaves.append(jnp.asarray(value) if sharding is None else jax.make_array_from_callback(
        shape, sharding, lambda index, value=value: value[index]))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _host_copy(name: str, array) -> np.ndarray:
  """A NumPy copy of a replicated array: this process's first copy of it."""
  if isinstance(array, jax.Array):
    if not array.sharding.is_fully_replicated:
      raise ValueError(f"packed state {name} is split over devices ({array.sharding}); "
                       "a train state is replicated")
    array = array.addressable_data(0)
  return np.asarray(array)


def _abstract_packed(abstract_state) -> dict:
  sizes, _, _ = _packing(abstract_state)
  sharding = getattr(jax.tree_util.tree_leaves(abstract_state)[0], "sharding", None)
  return {name: jax.ShapeDtypeStruct((size,), np.dtype(name), sharding=sharding)
          for name, size in sizes.items()}


def _check_packed_layout(manager: ocp.CheckpointManager, step: int, abstract_state) -> None:
  """Raises ValueError, naming the arrays, when the checkpoint at ``step``
  was written for another state layout (another model, optimiser or config).
  Checked on the metadata, before any array is read: a failed restore would
  leave Orbax's started reads behind."""
  handler = ocp.StandardCheckpointHandler()  # the manager knows no handler before a restore
  try:
    stored = handler.metadata(manager.directory / str(step) / "packed")
  finally:
    handler.close()
  stored = getattr(stored, "tree", stored)
  found = {name: (tuple(meta.shape), np.dtype(meta.dtype).name)
           for name, meta in sorted(stored.items())}
  expected = {name: (tuple(leaf.shape), np.dtype(leaf.dtype).name)
              for name, leaf in sorted(_abstract_packed(abstract_state).items())}
  if found != expected:
    raise ValueError(f"checkpoint was written for another state layout: it holds packed "
                     f"{found}, this run expects {expected}")


_ORBAX_LOCK = threading.RLock()


def _one_at_a_time():
  """The process-wide Orbax lock outside the main thread (module docstring)."""
  if threading.current_thread() is threading.main_thread():
    return contextlib.nullcontext(False)
  return _locked()


@contextlib.contextmanager
def _locked():
  with _ORBAX_LOCK:
    yield True


def create_manager(directory: str, keep_latest: int = 2, keep_best: int = 1) -> ocp.CheckpointManager:
  """Manager (asynchronous with one process) keeping the latest
  ``keep_latest`` checkpoints and the ``keep_best`` best by ``top1`` (saves
  without metrics count for latest only)."""
  policy = policies.AnyPreservationPolicy([
      policies.LatestN(n=keep_latest),
      policies.BestN(get_metric_fn=lambda m: m["top1"], reverse=False, n=keep_best,
                     keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                         enable_async_checkpointing=jax.process_count() == 1)
  with _one_at_a_time():
    return ocp.CheckpointManager(directory, options=options,
                                 item_names=("packed", "history", "checksums", "state"))


def complete_steps(directory: str) -> list[int]:
  """The steps of the finalised checkpoints in ``directory`` (Orbax names one
  by its step once it is complete; one being written ends in
  ``.orbax-checkpoint-tmp``), read from the directory listing alone."""
  try:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
  except OSError:  # no such directory (yet, or any more)
    return []


def close(manager: ocp.CheckpointManager) -> None:
  """Waits for the manager's pending saves, then closes it."""
  with _one_at_a_time():
    try:
      manager.wait_until_finished()
    finally:
      manager.close()


def save(manager: ocp.CheckpointManager, state, history: list, metrics: dict | None = None,
         force: bool = False) -> bool:
  """Saves ``state`` and ``history`` at ``state.step`` (asynchronously in the
  main thread, finished before returning in others); False when that step is
  already saved."""
  step = int(jax.device_get(state.step))
  packed, sums = _pack_with_checksums(state)
  checksums = {"packed": {k: int(v) for k, v in jax.device_get(sums).items()},
               "history": _history_checksum(history)}
  with _one_at_a_time() as serialised:
    if step in manager.all_steps():
      return False
    saved = manager.save(step, args=ocp.args.Composite(
        packed=ocp.args.StandardSave(packed), history=ocp.args.JsonSave(history),
        checksums=ocp.args.JsonSave(checksums)),
        metrics=metrics, force=force)
    if serialised:
      manager.wait_until_finished()
    return saved


def _quarantine(manager: ocp.CheckpointManager, step: int, reason: Exception) -> None:
  directory = os.fspath(manager.directory)
  corrupt_root = os.path.join(os.path.dirname(directory.rstrip("/")), "checkpoints_corrupt")
  target = os.path.join(corrupt_root, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  logging.error("checkpoint at step %d in %s is corrupt and is skipped (moved to %s): %s",
                step, directory, target, str(reason).splitlines()[0][:300])
  if distributed.is_primary():
    os.makedirs(corrupt_root, exist_ok=True)
    source = os.path.join(directory, str(step))
    if os.path.exists(source):
      shutil.move(source, target)
  distributed.barrier(f"quarantine-{step}")
  manager.reload()


def _verify_checksums(packed: dict, history, stored: dict) -> None:
  """Raises ValueError, naming what differs, when the restored arrays or
  history are not those that were saved (bytes changed on storage)."""
  got = {k: int(v) for k, v in jax.device_get(_checksums_of_packed(dict(packed))).items()}
  bad = [f"packed {name}" for name in sorted(set(got) | set(stored["packed"]))
         if got.get(name) != stored["packed"].get(name)]
  if _history_checksum(history) != stored["history"]:
    bad.append("history")
  if bad:
    raise ValueError(f"checksum mismatch in {', '.join(bad)}: the checkpoint's bytes changed "
                     "after it was written")


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> tuple[Any, list] | None:
  """(state, history) of the newest readable checkpoint, or None. A checkpoint
  that fails to restore is reported, moved aside and skipped, never used."""
  with _one_at_a_time():
    return _restore_latest(manager, abstract_state)


def _restore_latest(manager, abstract_state):
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      if (manager.directory / str(step) / "state").exists():
        restored = manager.restore(step, args=ocp.args.Composite(  # written before packing
            state=ocp.args.StandardRestore(abstract_state), history=ocp.args.JsonRestore()))
        state = restored["state"]
      else:
        _check_packed_layout(manager, step, abstract_state)
        items = dict(packed=ocp.args.StandardRestore(_abstract_packed(abstract_state)),
                     history=ocp.args.JsonRestore())
        if (manager.directory / str(step) / "checksums").exists():  # older ones have none
          items["checksums"] = ocp.args.JsonRestore()
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        if "checksums" in items:
          _verify_checksums(restored["packed"], restored["history"], restored["checksums"])
        state = unpack(restored["packed"], abstract_state)
      history = restored["history"]
      if int(jax.device_get(state.step)) != step or not isinstance(history, list):
        raise ValueError(f"checkpoint holds step {int(state.step)}, not {step}")
      return state, history
    except Exception as err:  # pylint: disable=broad-except
      _quarantine(manager, step, err)
  return None


def abstract(state: Any):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
      state)
