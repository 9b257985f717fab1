"""MobileNets of the published zoo.

* :class:`MobileNetV2` (Sandler et al., 2018), CIFAR, width 0.5, expansion 6
  (ARCHITECTURES.md §8).
* :class:`MobileNetV1` (Howard et al., 2017), ImageNet (§12).
"""
from __future__ import annotations

import flax.linen as nn

from rldjax.models.layers import ZooModel, global_avg_pool, torch_default_kernel

# (t, c, n, s) of the standard MobileNetV2 table.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(ZooModel):
  width: float = 0.5
  expansion: int = 6

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train)
    x = self.images(x)
    c_in = int(32 * self.width)
    x = net.bn("conv1.1", net.conv("conv1.0", x, c_in, 3, 2, 1), relu=True)
    for m, (t, c, n, s) in enumerate(V2_STAGES):
      t = self.expansion if t != 1 else 1
      c_out = int(c * self.width)
      for i in range(n):
        name = f"blocks.{m}.{i}.conv"
        stride = s if i == 0 else 1
        e = c_in * t
        h = net.bn(f"{name}.1", net.conv(f"{name}.0", x, e, 1), relu=True)
        h = net.bn(f"{name}.4", net.conv(f"{name}.3", h, e, 3, stride, 1, groups=e), relu=True)
        h = net.bn(f"{name}.7", net.conv(f"{name}.6", h, c_out, 1))
        x = x + h if stride == 1 and c_in == c_out else h
        c_in = c_out
    last = int(1280 * self.width) if self.width > 1.0 else 1280
    x = net.bn("conv2.1", net.conv("conv2.0", x, last, 1), relu=True)
    return self.head(net, "classifier.0", global_avg_pool(x), features,
                     kernel_init=nn.initializers.normal(0.01),
                     bias_init=nn.initializers.zeros)


V1_UNITS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
            (256, 512, 2)) + ((512, 512, 1),) * 5 + ((512, 1024, 2), (1024, 1024, 1))


class MobileNetV1(ZooModel):
  """The published model's classifier is always 1000-way whatever class count
  its constructor is given; here it has ``num_classes`` outputs (1000 for the
  published checkpoints)."""

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train, conv_init=torch_default_kernel)
    x = self.images(x)
    x = net.bn("model.0.1", net.conv("model.0.0", x, 32, 3, 2, 1), relu=True)
    for k, (a, b, s) in enumerate(V1_UNITS, start=1):
      x = net.bn(f"model.{k}.1", net.conv(f"model.{k}.0", x, a, 3, s, 1, groups=a), relu=True)
      x = net.bn(f"model.{k}.4", net.conv(f"model.{k}.3", x, b, 1), relu=True)
    return self.head(net, "fc", global_avg_pool(x), features)
