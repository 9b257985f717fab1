"""Wide ResNets of the published zoo (Zagoruyko & Komodakis, 2016;
ARCHITECTURES.md §6): pre-activation blocks, depth 6n + 4, widen factor k."""
from __future__ import annotations

import flax.linen as nn

from rldjax.models.layers import ZooModel, global_avg_pool, residual_stream


class WideResNet(ZooModel):
  """``published_double_bn_update`` reproduces the published forward pass,
  which re-applies ``block2.layer.0.bn1``, ``block3.layer.0.bn1`` and the head
  ``bn1`` to compute features, so in training mode those three BNs update their
  running statistics twice per pass (0.81/0.19). It is a bug of the published
  code, kept on by default so that training matches it; set False for the
  plain 0.9/0.1 update. Logits of a single pass are the same either way."""
  depth_n: int = 2
  widen: int = 1
  published_double_bn_update: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    net = self.net(train)
    ch = [16, 16 * self.widen, 32 * self.widen, 64 * self.widen]
    x = net.conv("conv1", self.images(x), ch[0], 3, 1, 1)
    stage_outputs = []
    # The stored stream pays in training, in stages of more than two blocks
    # (BENCHMARKS.md, "The residual stream").
    store = train and self.depth_n > 2
    for stage, stride in zip((1, 2, 3), (1, 2, 2)):
      for j in range(self.depth_n):
        name = f"block{stage}.layer.{j}"
        c_in = ch[stage - 1] if j == 0 else ch[stage]
        s = stride if j == 0 else 1
        a = net.bn(f"{name}.bn1", x, relu=True)
        h = net.bn(f"{name}.bn2", net.conv(f"{name}.conv1", a, ch[stage], 3, s, 1), relu=True)
        h = net.conv(f"{name}.conv2", h, ch[stage], 3, 1, 1)
        if c_in == ch[stage]:
          x = residual_stream(x + h, store=store)
        else:
          x = residual_stream(net.conv(f"{name}.convShortcut", a, ch[stage], 1, s) + h,
                              store=store)
      stage_outputs.append(x)
    pooled = global_avg_pool(net.bn("bn1", x, relu=True))
    out = self.head(net, "fc", pooled, features, bias_init=nn.initializers.zeros)
    if train and self.published_double_bn_update:
      # The published feature computation: the same BNs, the same inputs.
      net.bn("block2.layer.0.bn1", stage_outputs[0])
      net.bn("block3.layer.0.bn1", stage_outputs[1])
      net.bn("bn1", stage_outputs[2])
    return out
