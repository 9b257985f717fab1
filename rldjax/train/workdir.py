"""One run per workdir, and one experiment per workdir.

* One process per workdir: :class:`rldjax.run_lock.WorkdirLock`
  (``<workdir>/run.lock``).
* :func:`check_config`: ``<workdir>/config.json`` records the config a run was
  started with. A rerun whose config differs in a field that changes the
  experiment fails before training, naming every such field
  (``config.method: kd -> dkd``), once the workdir holds something trained
  (a checkpoint or an export; before that, as after a launch that stopped on
  a data or teacher error, the new config is recorded instead and the earlier
  launch's records move to ``superseded/``); logging, checkpoint and evaluation cadence
  (which epochs are evaluated: the training is the same), the data
  location, the data path (in memory or not: same batches), the input
  pipeline's threads (``dataset.host_threads``: same batches) and a larger
  ``num_epochs`` (continue training) may change.
* :func:`check_inputs`: ``<workdir>/inputs.json`` records what identifies
  the files a run reads (CRC-32 of the teacher's weights and of the in-memory
  splits, the splits' example counts; streaming: the counts, the TFDS
  version and a CRC-32 of each split's listing, ``builders.split_listing``).
  Once the workdir holds something
  trained, a launch whose files differ (a teacher retrained into the same
  export directory, a dataset rebuilt) fails before training, naming each
  difference, instead of resuming on other inputs. Since the teacher is
  checked by its weights, ``teacher.checkpoint`` may then name another path
  (a moved copy), as the data location may.
* :func:`check_machine`: ``<workdir>/machine.json`` records the machine
  (``rldjax.machine.numerics``) of the session that started the run; a
  session that resumes it on another one (which rounds differently, so the
  run drifts apart from an uninterrupted one) is recorded there too, and
  reported.
* :func:`set_aside_unreadable`: a damaged record (results.json) is kept
  aside and rewritten; a damaged config.json stops the run instead (the
  experiment cannot be compared).
* :func:`write_json` (from :mod:`rldjax.records`): atomic, strict JSON (a
  non-finite float is written as ``null``), readable by any parser.
* :func:`storage_failure`: whether an exception is the storage failing (a
  full disk, a missing permission) rather than a bug.
"""
from __future__ import annotations

import json
import os

from absl import logging

from rldjax.errors import RunError, WorkdirError
from rldjax.records import read_json_object, write_json

CONFIG_NAME = "config.json"
INPUTS_NAME = "inputs.json"
MACHINE_NAME = "machine.json"
# The inputs.json key of the teacher's weights, and the config field it makes
# free to change (the weights are compared instead of the path).
TEACHER_WEIGHTS = "config.teacher.checkpoint weights (CRC-32)"
CHECKED_BY_CONTENT = {"teacher.checkpoint": TEACHER_WEIGHTS}
# What a run keeps of its training: a workdir with none of these holds no experiment yet.
TRAINED_DIRS = ("checkpoints", "checkpoints_corrupt", "export")
# A launch's records besides its checkpoints and exports, and where they go when
# a launch with another config takes over a workdir in which nothing was trained.
RECORD_NAMES = ("results.json", "history.json")
EVENTS_PREFIX = "events.out.tfevents"
SUPERSEDED_DIR = "superseded"
UNREADABLE_SUFFIX = ".unreadable"  # a damaged record, kept aside (set_aside_unreadable)
# Fields that may differ between the runs of one workdir.
MAY_CHANGE = ("checkpoint", "log_every_steps", "steps_per_call", "eval_batch_size",
              "eval_last_epochs", "dataset.data_dir", "dataset.host_threads",
              "dataset.download", "dataset.in_memory", "distributed", "num_epochs")
# Fields added to the config after runs were recorded without them: in an older
# config.json, an absent field means this value.
ADDED_DEFAULTS = {"teacher.precompute_logits": False}
# TensorStore's status codes (Orbax's array writes raise them as ValueError)
# that mean the storage failed, not the program; a TensorStore error made from
# an OS error also names it (``[os_error_code='28']``).
STORAGE_STATUSES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DATA_LOSS",
                    "DEADLINE_EXCEEDED")
OS_ERROR_MARK = "[os_error_code="


def set_aside_unreadable(path: str) -> str | None:
  """Moves the JSON record ``path`` to ``<path>.unreadable`` (replacing an
  older one) when it exists and cannot be read as a JSON object; returns the
  new path, or None when there was nothing to set aside."""
  try:
    read_json_object(path)
    return None
  except FileNotFoundError:
    return None
  except ValueError:
    pass
  os.replace(path, path + UNREADABLE_SUFFIX)
  return path + UNREADABLE_SUFFIX


def storage_failure(err: BaseException) -> str | None:
  """The first line of the storage failure ``err`` is, or was raised from
  (``__cause__``): an ``OSError``, or a TensorStore error of
  :data:`STORAGE_STATUSES` or made from an OS error; None for anything else,
  a ``RunError`` included."""
  while err is not None and not isinstance(err, RunError):
    text = str(err)
    if isinstance(err, OSError) or (isinstance(err, ValueError) and (
        text.startswith(STORAGE_STATUSES) or OS_ERROR_MARK in text)):
      return (text.strip().splitlines() or [type(err).__name__])[0]
    err = err.__cause__
  return None


def local_path(workdir: str) -> str:
  """``workdir`` as an absolute path (Orbax needs them); refuses a storage URL
  (``gs://...``), which the run's files, written with ``open``, would turn
  into a local folder named ``gs:``."""
  if "://" in str(workdir):
    raise WorkdirError(f"workdir {workdir}: storage URLs are not supported; mount the bucket "
                       "(e.g. gcsfuse) on every host and pass the mounted path as --workdir")
  return os.path.abspath(workdir)


def ensure_workdir(workdir: str) -> None:
  """Creates ``workdir``, refusing a path that is a file."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} exists and is not a directory: pass a directory "
                       "(new or of this experiment) as --workdir")
  os.makedirs(workdir, exist_ok=True)


def flatten_config(d: dict, prefix: str = "") -> dict:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (tuples as lists, as JSON has them)."""
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten_config(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def _may_change(field: str) -> bool:
  return any(field == m or field.startswith(m + ".") for m in MAY_CHANGE)


def holds_training(workdir: str) -> bool:
  """Whether ``workdir`` keeps anything trained: a checkpoint (usable or set
  aside as corrupt) or an exported model. A run that stopped before its first
  checkpoint (a data or teacher error at the start) leaves none."""
  return any(os.path.isdir(d) and os.listdir(d)
             for d in (os.path.join(workdir, name) for name in TRAINED_DIRS))


def _supersede_records(workdir: str) -> list[str]:
  """Moves the records of a launch that trained nothing (results.json,
  history.json, its TensorBoard events) to ``<workdir>/superseded/``, so that
  the run recorded next starts its own (its times, its curves); returns the
  names moved."""
  names = [n for n in sorted(os.listdir(workdir))
           if n in RECORD_NAMES or n.startswith(EVENTS_PREFIX)]
  if names:
    target = os.path.join(workdir, SUPERSEDED_DIR)
    os.makedirs(target, exist_ok=True)
    for name in names:
      os.replace(os.path.join(workdir, name), os.path.join(target, name))
  return names


def _recorded_inputs(workdir: str) -> dict | None:
  """inputs.json's record, None when there is none; WorkdirError when it is damaged."""
  path = os.path.join(workdir, INPUTS_NAME)
  if not os.path.exists(path):
    return None
  try:
    return read_json_object(path)
  except ValueError as err:
    raise WorkdirError(
        f"workdir {workdir}: {INPUTS_NAME} cannot be read ({err}), so the files this launch "
        f"reads cannot be compared with those the run was trained with. Restore it, or delete "
        f"it to resume without that check.") from None


def _content_checked_fields(workdir: str) -> set[str]:
  """Config fields (paths) whose files :func:`check_inputs` compares by content in
  this workdir, so that the path itself may change."""
  try:
    recorded = _recorded_inputs(workdir) or {}
  except WorkdirError:
    return set()  # check_inputs reports it
  return {field for field, key in CHECKED_BY_CONTENT.items() if key in recorded}


def check_inputs(workdir: str, inputs: dict) -> None:
  """Records ``inputs`` (a flat dict of JSON values identifying the files the
  run reads) in ``<workdir>/inputs.json``, or compares them with the record;
  raises WorkdirError naming each difference once the workdir holds something
  trained. Keys present on one side only (the in-memory path records
  checksums that the streaming path does not) are not compared; the record
  keeps the union."""
  trained = holds_training(workdir)
  recorded = _recorded_inputs(workdir) if trained else None  # else: nothing to compare with
  if recorded is not None:
    changed = [f"{k}: {recorded[k]!r} when this workdir was trained, {inputs[k]!r} now"
               for k in sorted(set(recorded) & set(inputs)) if recorded[k] != inputs[k]]
    if changed:
      raise WorkdirError(
          f"workdir {workdir} was trained on other inputs than this launch reads:\n  "
          + "\n  ".join(changed) + "\nThe files at config.teacher.checkpoint or "
          "config.dataset.data_dir (an image folder: config.dataset.name) changed since (a "
          "teacher trained on into the same export directory, a dataset prepared again, image "
          "files renamed, added or removed). Restore the ones it was trained with to "
          "resume, or use a new --workdir for a run on these.")
  elif recorded is None and trained:
    logging.warning("workdir %s has no %s (made by an earlier version): recording the inputs of "
                    "this launch; those of its earlier sessions cannot be checked",
                    workdir, INPUTS_NAME)
  merged = {**recorded, **inputs} if recorded is not None else dict(inputs)
  if merged != recorded:
    write_json(os.path.join(workdir, INPUTS_NAME), merged)


def check_machine(workdir: str, machine: dict) -> dict:
  """Records ``machine`` (``rldjax.machine.numerics``) in
  ``<workdir>/machine.json`` for a run that has trained nothing yet; for one
  that has, compares it with the recorded machine and records each distinct
  difference. Returns ``{"this session": [...], "recorded": [[...], ...]}``:
  how this machine differs from the first (``"usable cores: 2 then, 1 now"``;
  empty on the same), and every difference recorded so far, one list per
  other machine. A damaged record is set aside and this machine recorded, as
  it is for a workdir trained before this record existed."""
  path = os.path.join(workdir, MACHINE_NAME)
  recorded = None
  if holds_training(workdir) and os.path.exists(path):
    if set_aside_unreadable(path) is None:
      recorded = read_json_object(path)
    if not isinstance((recorded or {}).get("first"), dict):
      logging.warning("workdir %s: %s cannot be read; recording this session's machine as the "
                      "run's", workdir, MACHINE_NAME)
      recorded = None
  if recorded is None:
    write_json(path, {"first": machine, "others": []})
    return {"this session": [], "recorded": []}
  first, others = recorded["first"], list(recorded.get("others") or [])
  changed = [f"{k}: {first.get(k, '<absent>')!r} then, {machine[k]!r} now"
             for k in machine if first.get(k, "<absent>") != machine[k]]
  if changed and changed not in others:
    others.append(changed)
    write_json(path, {"first": first, "others": others})
  return {"this session": changed, "recorded": others}


def check_config(workdir: str, config: dict, epochs_done_fn=None) -> None:
  """Records ``config`` (a plain dict) in a new workdir, or compares it with
  the recorded one; raises WorkdirError naming each field that changes the
  experiment. ``epochs_done_fn()`` gives the epochs already trained (checked
  against a smaller ``num_epochs``)."""
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.exists(path):
    write_json(path, config)
    return
  try:
    recorded = read_json_object(path)
  except ValueError as err:
    raise WorkdirError(
        f"workdir {workdir}: {CONFIG_NAME} cannot be read ({err}), so the experiment it holds "
        f"cannot be compared with this one. Restore it (results.json keeps the same config "
        f"under \"config\"), or use a new --workdir.") from None
  old, new = flatten_config(recorded), flatten_config(json.loads(json.dumps(config, default=str)))
  old = {**{k: v for k, v in ADDED_DEFAULTS.items() if k in new}, **old}
  content_checked = _content_checked_fields(workdir)
  changed = [f"config.{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
             for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not _may_change(k) and k not in content_checked]
  if changed and not holds_training(workdir):
    moved = _supersede_records(workdir)
    logging.warning("workdir %s: %s records another config, but nothing was trained here (no "
                    "checkpoint, no export): recording this run's config instead%s:\n  %s",
                    workdir, CONFIG_NAME,
                    f" (the earlier launch's records are in {SUPERSEDED_DIR}/)" if moved else "",
                    "\n  ".join(changed))
    write_json(path, config)
    return
  if changed:
    raise WorkdirError(
        f"workdir {workdir} holds a run of another experiment; these fields differ from its "
        f"{CONFIG_NAME}:\n  " + "\n  ".join(changed) + "\nUse a new --workdir for a new "
        "experiment.")
  if new.get("num_epochs") != old.get("num_epochs"):
    done = epochs_done_fn() if epochs_done_fn else 0
    if new["num_epochs"] < done:
      raise WorkdirError(f"config.num_epochs: {old['num_epochs']} -> {new['num_epochs']}, but "
                         f"{done} epochs are already done in {workdir}")
  if new != old:
    write_json(path, config)
