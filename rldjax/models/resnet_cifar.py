"""CIFAR ResNets of the published zoo (ARCHITECTURES.md §4 and §5).

* :class:`CifarResNet`: resnet8 … resnet110, resnet8x4, resnet32x4 (He et al.,
  2016, CIFAR variant; 6n+2 layers).
* :class:`ResNetV2`: the CIFAR ``ResNet18`` / ``ResNet50`` (3×3 stem, no max pool).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from rldjax.models.layers import Net, ZooModel, global_avg_pool, residual_stream


def basic_block(net: Net, name: str, x, planes: int, stride: int):
  """conv-bn-relu-conv-bn + shortcut, ReLU after the add (§4, §5)."""
  out = net.conv(f"{name}.conv1", x, planes, 3, stride, 1)
  out = net.bn(f"{name}.bn1", out, relu=True)
  out = net.conv(f"{name}.conv2", out, planes, 3, 1, 1)
  out = net.bn(f"{name}.bn2", out)
  return out


class CifarResNet(ZooModel):
  depth_n: int = 1            # blocks per stage; depth = 6n + 2
  widths: Sequence[int] = (16, 16, 32, 64)

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train)
    x = self.images(x)
    x = net.bn("bn1", net.conv("conv1", x, self.widths[0], 3, 1, 1), relu=True)
    in_ch = self.widths[0]
    for stage, (width, stride) in enumerate(zip(self.widths[1:], (1, 2, 2)), start=1):
      for j in range(self.depth_n):
        name = f"layer{stage}.{j}"
        s = stride if j == 0 else 1
        out = basic_block(net, name, x, width, s)
        if j == 0 and (s != 1 or in_ch != width):
          x = net.bn(f"{name}.downsample.1", net.conv(f"{name}.downsample.0", x, width, 1, s))
        x = residual_stream(nn.relu(out + x), store=not net.train)
        in_ch = width
    return self.head(net, "fc", global_avg_pool(x), features)


def four_stages(net: Net, x, blocks: Sequence[int], bottleneck: bool, shortcut: str):
  """The four-stage ResNet body shared by the CIFAR ResNet18/50 (§5) and the
  ImageNet ResNets (§11): planes 64..512, strides 1, 2, 2, 2 on block 0, a
  projection shortcut named ``shortcut`` ("shortcut" or "downsample") where
  the stride or width changes, ReLU after the add."""
  expansion = 4 if bottleneck else 1
  in_ch = x.shape[-1]
  for stage, (planes, stride, count) in enumerate(
      zip((64, 128, 256, 512), (1, 2, 2, 2), blocks), start=1):
    for j in range(count):
      name = f"layer{stage}.{j}"
      s = stride if j == 0 else 1
      if bottleneck:
        out = net.bn(f"{name}.bn1", net.conv(f"{name}.conv1", x, planes, 1), relu=True)
        out = net.bn(f"{name}.bn2", net.conv(f"{name}.conv2", out, planes, 3, s, 1), relu=True)
        out = net.bn(f"{name}.bn3", net.conv(f"{name}.conv3", out, planes * 4, 1))
      else:
        out = basic_block(net, name, x, planes, s)
      if s != 1 or in_ch != planes * expansion:
        x = net.bn(f"{name}.{shortcut}.1",
                   net.conv(f"{name}.{shortcut}.0", x, planes * expansion, 1, s))
      x = residual_stream(nn.relu(out + x), store=not net.train)
      in_ch = planes * expansion
  return x


class ResNetV2(ZooModel):
  """CIFAR ResNet18/ResNet50 (§5): 3×3 stem, four stages, 'shortcut' names."""
  bottleneck: bool = False
  blocks: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train)
    x = net.bn("bn1", net.conv("conv1", self.images(x), 64, 3, 1, 1), relu=True)
    x = four_stages(net, x, self.blocks, self.bottleneck, "shortcut")
    return self.head(net, "linear", global_avg_pool(x), features)
