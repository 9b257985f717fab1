"""VGG with batch norm, CIFAR variant of the published zoo (Simonyan &
Zisserman, 2015; ARCHITECTURES.md §7)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from rldjax.models.layers import ZooModel, global_avg_pool

CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(ZooModel):
  cfg: Sequence[Sequence[int]] = CONFIGS["vgg8"]

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train)
    x = self.images(x)
    input_height = x.shape[1]
    for b, widths in enumerate(self.cfg):
      for u, width in enumerate(widths):
        x = net.conv(f"block{b}.{3 * u}", x, width, 3, 1, 1, bias=True)
        x = net.bn(f"block{b}.{3 * u + 1}", x, relu=True)
      if b < 3 or (b == 3 and input_height == 64):
        x = nn.max_pool(x, (2, 2), (2, 2))
    return self.head(net, "classifier", global_avg_pool(x), features,
                     kernel_init=nn.initializers.normal(0.01),
                     bias_init=nn.initializers.zeros)
