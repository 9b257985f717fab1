"""ShuffleNets of the published zoo, CIFAR variants.

* :class:`ShuffleV1` (Zhang et al., 2018), groups 3 (ARCHITECTURES.md §9).
* :class:`ShuffleV2` (Ma et al., 2018), net_size 1 (§10).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from rldjax.models.layers import ZooModel, channel_shuffle, global_avg_pool, residual_stream
from rldjax.models.layers import torch_default_kernel


class ShuffleV1(ZooModel):
  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train, conv_init=torch_default_kernel)
    g = self.groups
    x = net.bn("bn1", net.conv("conv1", self.images(x), 24, 1), relu=True)
    c_in = 24
    for stage, (width, count) in enumerate(zip(self.out_planes, self.num_blocks), start=1):
      for j in range(count):
        name = f"layer{stage}.{j}"
        stride = 2 if j == 0 else 1
        branch_out = width - c_in if j == 0 else width
        mid = int(branch_out / 4)
        g1 = 1 if c_in == 24 else g
        h = net.bn(f"{name}.bn1", net.conv(f"{name}.conv1", x, mid, 1, groups=g1), relu=True)
        h = channel_shuffle(h, g1)
        h = net.bn(f"{name}.bn2", net.conv(f"{name}.conv2", h, mid, 3, stride, 1, groups=mid),
                   relu=True)
        h = net.bn(f"{name}.bn3", net.conv(f"{name}.conv3", h, branch_out, 1, groups=g))
        if stride == 2:
          shortcut = nn.avg_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)),
                                 count_include_pad=True)
          x = residual_stream(nn.relu(jnp.concatenate([h, shortcut], axis=-1)))
        else:
          x = residual_stream(nn.relu(h + x))
        c_in = width
    return self.head(net, "linear", global_avg_pool(x), features)


class ShuffleV2(ZooModel):
  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train, conv_init=torch_default_kernel)
    x = net.bn("bn1", net.conv("conv1", self.images(x), 24, 1), relu=True)
    c_in = 24
    for stage, (c_out, count) in enumerate(zip(self.out_channels[:3], self.num_blocks), start=1):
      name = f"layer{stage}.0"
      mid = c_out // 2
      left = net.bn(f"{name}.bn1", net.conv(f"{name}.conv1", x, c_in, 3, 2, 1, groups=c_in))
      left = net.bn(f"{name}.bn2", net.conv(f"{name}.conv2", left, mid, 1), relu=True)
      right = net.bn(f"{name}.bn3", net.conv(f"{name}.conv3", x, mid, 1), relu=True)
      right = net.bn(f"{name}.bn4", net.conv(f"{name}.conv4", right, mid, 3, 2, 1, groups=mid))
      right = net.bn(f"{name}.bn5", net.conv(f"{name}.conv5", right, mid, 1), relu=True)
      x = channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)
      for j in range(1, count + 1):
        name = f"layer{stage}.{j}"
        h = c_out // 2
        x1, x2 = x[..., :h], x[..., h:]
        b = net.bn(f"{name}.bn1", net.conv(f"{name}.conv1", x2, h, 1), relu=True)
        b = net.bn(f"{name}.bn2", net.conv(f"{name}.conv2", b, h, 3, 1, 1, groups=h))
        b = net.bn(f"{name}.bn3", net.conv(f"{name}.conv3", b, h, 1), relu=True)
        x = channel_shuffle(jnp.concatenate([x1, b], axis=-1), 2)
      c_in = c_out
    x = net.bn("bn2", net.conv("conv2", x, self.out_channels[3], 1), relu=True)
    return self.head(net, "linear", global_avg_pool(x), features)
