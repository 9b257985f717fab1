"""Random in-memory splits for throughput checks where no dataset is at hand.

``config.dataset.name = "synthetic:TRAIN,EVAL"`` (in-memory kinds: ``cifar``,
``digits``) gives a training split of TRAIN and an evaluation split of EVAL
uniformly random uint8 images, ``dataset.image_size`` square with the kind's
channels (3; digits 1), and labels uniform over ``dataset.num_classes``: the
shapes of the real data and nothing to learn. The arrays depend only on the
sizes (seed 0), so every process of a run, and every run, gets the same ones.
``benchmarks/schedule.py`` times the whole training loop on them.
"""
from __future__ import annotations

import numpy as np

from rldjax.errors import ConfigError

PREFIX = "synthetic:"
CHANNELS = {"cifar": 3, "digits": 1}


def is_synthetic(name: str) -> bool:
  return name.startswith(PREFIX)


def sizes(name: str) -> tuple[int, int]:
  """(TRAIN, EVAL) of ``synthetic:TRAIN,EVAL``; ConfigError naming the field otherwise."""
  parts = name[len(PREFIX):].split(",")
  try:
    train, evaluation = (int(p) for p in parts)
  except ValueError:
    train = evaluation = 0
  if len(parts) != 2 or train < 1 or evaluation < 1:
    raise ConfigError(f"config.dataset.name: {name!r}: synthetic data is named "
                      "'synthetic:TRAIN,EVAL' with two positive example counts, e.g. "
                      "'synthetic:50000,10000'")
  return train, evaluation


def check(name: str, kind: str) -> None:
  """ConfigError naming the field unless ``name`` is well formed for ``kind``."""
  sizes(name)
  if kind not in CHANNELS:
    raise ConfigError(f"config.dataset.kind: synthetic data is held in memory, for kinds "
                      f"{', '.join(CHANNELS)}; got {kind!r}")


def splits(name: str, kind: str, image_size: int, num_classes: int):
  """((train images, labels), (eval images, labels)): uint8 [N, S, S, C], int32 [N]."""
  check(name, kind)
  rng = np.random.default_rng(0)
  out = []
  for count in sizes(name):
    images = rng.integers(0, 256, (count, image_size, image_size, CHANNELS[kind]),
                          dtype=np.uint8)
    out.append((images, rng.integers(0, num_classes, count).astype(np.int32)))
  return tuple(out)
