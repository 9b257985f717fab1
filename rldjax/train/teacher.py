"""The teacher of a distillation run: its exported variables, loaded from
``config.teacher.checkpoint`` (``python -m rldjax.convert`` writes the
published teachers there; a teacher run writes ``export/last``) and checked
against the config's teacher tag and class count; in a multi-process run, on
every process, with the same weights everywhere.
"""
from __future__ import annotations

import os

from rldjax import distributed, errors, export
from rldjax.train import workdir as workdir_lib


def load(config):
  """The teacher's variables (None for vanilla), checked against the config."""
  if config.method == "vanilla":
    return None
  path = config.teacher.checkpoint
  if not os.path.exists(os.path.join(path, "model.json")):
    raise errors.TeacherError(
        f"config.teacher.checkpoint: no exported model at {os.path.abspath(path)}. Convert the "
        "published teachers once with `python -m rldjax.convert cifar_teachers.tar "
        "runs/cifar100/teachers` (ImageNet: `python -m rldjax.convert --arch imagenet/ResNet34 "
        "resnet34-b627a593.pth runs/imagenet/teachers/ResNet34/export`), or pass "
        "teacher=<a teacher run's workdir>/export/last in the config string")
  tag, num_classes, variables = export.load_model(path)
  if config.teacher.tag != tag:
    raise errors.TeacherError(f"config.teacher.tag is {config.teacher.tag!r} but {path} holds "
                              f"{tag!r}")
  if num_classes != config.dataset.num_classes:
    raise errors.TeacherError(f"config.teacher.checkpoint: teacher has {num_classes} classes, "
                              f"the dataset {config.dataset.num_classes}")
  return variables


def load_everywhere(config):
  """:func:`load` on every process, each from its own
  ``config.teacher.checkpoint``: a process that cannot load it stops every
  process, and the processes' teachers must hold the same weights. Returns
  the variables (None for vanilla) and what identifies them (``{}`` for
  vanilla; recorded in the workdir)."""
  variables, error = None, None
  try:
    variables = load(config)
  except errors.RunError as err:
    error = err
  distributed.stop_if_any(error, "loading the teacher")
  if variables is None:
    return None, {}
  identity = {workdir_lib.TEACHER_WEIGHTS: distributed.fingerprint(variables)}
  distributed.check_same_as_primary(
      "comparing this process's teacher with process 0's (config.teacher.checkpoint may be "
      "another path on each process, but must hold the same model)", identity)
  return variables, identity
