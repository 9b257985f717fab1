"""Tag -> model constructor for the published zoo.

Tags are ``"cifar/<name>"`` (32×32 input) and ``"imagenet/<name>"`` (224×224),
as in the parity manifest; the CIFAR ResNet18/ResNet50 and the ImageNet ones
are different networks.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from rldjax.models.mobilenet import MobileNetV1, MobileNetV2
from rldjax.models.resnet_cifar import CifarResNet, ResNetV2
from rldjax.models.resnet_imagenet import ImageNetResNet
from rldjax.models.shufflenet import ShuffleV1, ShuffleV2
from rldjax.models.vgg import CONFIGS as VGG_CONFIGS, VGG
from rldjax.models.wrn import WideResNet

_P = functools.partial
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
for _n, _depth in ((1, 8), (2, 14), (3, 20), (5, 32), (7, 44), (9, 56), (18, 110)):
  _BUILDERS[f"cifar/resnet{_depth}"] = _P(CifarResNet, depth_n=_n)
_BUILDERS["cifar/resnet8x4"] = _P(CifarResNet, depth_n=1, widths=(32, 64, 128, 256))
_BUILDERS["cifar/resnet32x4"] = _P(CifarResNet, depth_n=5, widths=(32, 64, 128, 256))
_BUILDERS["cifar/ResNet18"] = _P(ResNetV2, bottleneck=False, blocks=(2, 2, 2, 2))
_BUILDERS["cifar/ResNet50"] = _P(ResNetV2, bottleneck=True, blocks=(3, 4, 6, 3))
for _d, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
  _BUILDERS[f"cifar/wrn_{_d}_{_k}"] = _P(WideResNet, depth_n=(_d - 4) // 6, widen=_k)
for _name, _cfg in VGG_CONFIGS.items():
  _BUILDERS[f"cifar/{_name}"] = _P(VGG, cfg=_cfg)
_BUILDERS["cifar/MobileNetV2"] = MobileNetV2
_BUILDERS["cifar/ShuffleV1"] = ShuffleV1
_BUILDERS["cifar/ShuffleV2"] = ShuffleV2
_BUILDERS["imagenet/ResNet18"] = _P(ImageNetResNet, bottleneck=False, blocks=(2, 2, 2, 2))
_BUILDERS["imagenet/ResNet34"] = _P(ImageNetResNet, bottleneck=False, blocks=(3, 4, 6, 3))
_BUILDERS["imagenet/ResNet50"] = _P(ImageNetResNet, bottleneck=True, blocks=(3, 4, 6, 3))
_BUILDERS["imagenet/MobileNetV1"] = MobileNetV1

INPUT_SIZE = {tag: (224 if tag.startswith("imagenet/") else 32) for tag in _BUILDERS}
DEFAULT_CLASSES = {tag: (1000 if tag.startswith("imagenet/") else 100) for tag in _BUILDERS}


def tags() -> tuple[str, ...]:
  return tuple(_BUILDERS)


def register(tag: str, builder: Callable[..., nn.Module], input_size: int,
             num_classes: int) -> None:
  """Adds a model family member (e.g. a small variant for another data set)."""
  if tag in _BUILDERS:
    raise ValueError(f"model tag {tag!r} is already registered")
  _BUILDERS[tag] = builder
  INPUT_SIZE[tag] = input_size
  DEFAULT_CLASSES[tag] = num_classes


def create(tag: str, num_classes: int | None = None, dtype: Any = jnp.float32,
           **kwargs) -> nn.Module:
  """The zoo model ``tag`` as a Linen module.

  Call it as ``module.apply(variables, images_nhwc, train=False)`` for logits;
  in training, ``module.apply(variables, x, train=True, mutable=["batch_stats"])``.
  ``features=True`` also returns ``{"pooled": penultimate features}``.

  Args:
    tag: ``"cifar/<name>"`` or ``"imagenet/<name>"``; see :func:`tags`.
    num_classes: output classes (default: 100 for CIFAR, 1000 for ImageNet).
    dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32
      and batch-norm statistics are computed in float32.
    **kwargs: family options, e.g. ``published_double_bn_update`` for WRNs.
  """
  if tag not in _BUILDERS:
    raise KeyError(f"unknown model tag {tag!r}; known: {', '.join(_BUILDERS)}")
  if num_classes is None:
    num_classes = DEFAULT_CLASSES[tag]
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
  return _BUILDERS[tag](num_classes=num_classes, dtype=dtype, **kwargs)


# Zoo-style variants for the offline 8×8 digits demo (rldjax_digits), from the
# CIFAR ResNet family; the 8×8 input goes 8 -> 8 -> 4 -> 2. The teacher has
# half the CIFAR width, the student an eighth (44,370 and 1,420 parameters):
# a student that trains to well below its teacher, as in the papers' pairs.
register("digits/resnet14", _P(CifarResNet, depth_n=2, widths=(8, 8, 16, 32)), 8, 10)
register("digits/resnet8", _P(CifarResNet, depth_n=1, widths=(2, 2, 4, 8)), 8, 10)
