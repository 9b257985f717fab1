"""ImageNet ResNets of the published zoo (He et al., 2016; ARCHITECTURES.md §11),
written in the conventional "ReLU after the add" form, which gives the same
logits as the published "ReLU at block start" form."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from rldjax.models.layers import ZooModel, global_avg_pool
from rldjax.models.resnet_cifar import four_stages


class ImageNetResNet(ZooModel):
  bottleneck: bool = False
  blocks: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train)
    x = net.bn("bn1", net.conv("conv1", self.images(x), 64, 7, 2, 3), relu=True)
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    x = four_stages(net, x, self.blocks, self.bottleneck, "downsample")
    return self.head(net, "fc", global_avg_pool(x), features)
