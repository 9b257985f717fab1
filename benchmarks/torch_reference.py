"""A PyTorch reference for timing only: the CIFAR ResNets of the published zoo
(../shared/parity/ARCHITECTURES.md §4) and a published-form distillation step
(SGD momentum 0.9, weight decay on every parameter, CE + KD / DKD / RLD /
LDRLD).

Used by benchmarks/train_step.py to time the same step in PyTorch on the same
machine; never imported by the package. ``tests/test_torch_reference.py``
checks that its networks and losses compute what rldjax's do. Needs the
``torch`` extra.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_RESNETS = {  # name -> (blocks per stage n, widths [W0, W1, W2, W3])
    "resnet8": (1, (16, 16, 32, 64)), "resnet14": (2, (16, 16, 32, 64)),
    "resnet20": (3, (16, 16, 32, 64)), "resnet32": (5, (16, 16, 32, 64)),
    "resnet44": (7, (16, 16, 32, 64)), "resnet56": (9, (16, 16, 32, 64)),
    "resnet110": (18, (16, 16, 32, 64)), "resnet8x4": (1, (32, 64, 128, 256)),
    "resnet32x4": (5, (32, 64, 128, 256)),
}


class BasicBlock(nn.Module):
  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c_out)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.downsample = None
    if stride != 1 or c_in != c_out:
      self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False),
                                      nn.BatchNorm2d(c_out))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
  def __init__(self, n, widths, num_classes=100):
    super().__init__()
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    layers, c_in = [], widths[0]
    for width, stride in zip(widths[1:], (1, 2, 2)):
      blocks = []
      for j in range(n):
        blocks.append(BasicBlock(c_in, width, stride if j == 0 else 1))
        c_in = width
      layers.append(nn.Sequential(*blocks))
    self.layer1, self.layer2, self.layer3 = layers
    self.fc = nn.Linear(widths[3], num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def create(name: str, num_classes: int = 100) -> nn.Module:
  if name not in CIFAR_RESNETS:
    raise KeyError(f"no PyTorch reference for {name!r}; one of {', '.join(CIFAR_RESNETS)}")
  n, widths = CIFAR_RESNETS[name]
  return CifarResNet(n, widths, num_classes)


def kd_loss(s, t, temperature):
  log_ps = F.log_softmax(s / temperature, dim=1)
  pt = F.softmax(t / temperature, dim=1)
  return F.kl_div(log_ps, pt, reduction="none").sum(1).mean() * temperature ** 2


def _binary(p, mask):
  """[p(class in mask), p(rest)] per row."""
  inside = (p * mask).sum(1, keepdim=True)
  return torch.cat([inside, 1 - inside], dim=1)


def dkd_loss(s, t, y, alpha, beta, temperature):
  gt = F.one_hot(y, s.shape[1]).float()
  ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
  bs, bt = _binary(ps, gt), _binary(pt, gt)
  tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * temperature ** 2 / s.shape[0]
  log_ps2 = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
  pt2 = F.softmax(t / temperature - 1000.0 * gt, dim=1)
  nckd = F.kl_div(log_ps2, pt2, reduction="sum") * temperature ** 2 / s.shape[0]
  return alpha * tckd + beta * nckd


def rld_loss(s, t, y, alpha, beta, temperature):
  """The published RLD: sample confidence on [p_top1(t), rest] vs [p_y(s), rest]
  and masked correlation over the classes the teacher ranks below the label."""
  gt = F.one_hot(y, s.shape[1]).float()
  top1 = F.one_hot(t.argmax(1), s.shape[1]).float()
  ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
  scd = F.kl_div(torch.log(_binary(ps, gt)), _binary(pt, top1), reduction="sum")
  scd = scd * temperature ** 2 / s.shape[0]
  drop = (t >= t.gather(1, y[:, None])).float()  # the label and every class ranked above it
  log_ps2 = F.log_softmax(s / temperature - 1000.0 * drop, dim=1)
  pt2 = F.softmax(t / temperature - 1000.0 * drop, dim=1)
  mcd = F.kl_div(log_ps2, pt2, reduction="sum") * temperature ** 2 / s.shape[0]
  return alpha * scd + beta * mcd


def ldrld_loss(s, t, alpha, beta, temperature, k=7, irw_offset=1.5, erd_scale=2.0,
               erd_rate=0.05):
  """LDRLD (Xu et al., ICCV 2025), ranked by the student: every pair (i < j) of
  the top-k classes as a 2-class KL weighted ``erd_scale / (irw_offset + j - i)
  * exp(-erd_rate * (i + j + 2))`` (ranks from 0), plus the KL over the top-k
  set, averaged over the ``k(k-1)/2 + 1`` terms; and the KL over the remaining
  classes (the top-k pushed down by 1000, as the published code masks)."""
  top = s.topk(k, dim=1).indices
  ss, tt = s.gather(1, top) / temperature, t.gather(1, top) / temperature
  i, j = torch.triu_indices(k, k, 1, device=s.device)
  weight = erd_scale / (irw_offset + (j - i)) * torch.exp(-erd_rate * (i + j + 2.0))
  pair_s, pair_t = torch.stack([ss[:, i], ss[:, j]], -1), torch.stack([tt[:, i], tt[:, j]], -1)
  pairs = F.kl_div(F.log_softmax(pair_s, -1), F.softmax(pair_t, -1), reduction="none").sum(-1)
  whole = F.kl_div(F.log_softmax(ss, 1), F.softmax(tt, 1), reduction="none").sum(1)
  local = ((pairs * weight).sum(1) + whole) / (len(weight) + 1) * temperature ** 2
  drop = torch.zeros_like(s).scatter_(1, top, 1.0)
  rest = F.kl_div(F.log_softmax(s / temperature - 1000.0 * drop, dim=1),
                  F.softmax(t / temperature - 1000.0 * drop, dim=1),
                  reduction="none").sum(1) * temperature ** 2
  return (alpha * local + beta * rest).mean()


def make_step(student: nn.Module, teacher: nn.Module | None, method: str, lr: float = 0.05):
  """A published-form step ``step(images_nchw, labels) -> loss``: teacher in
  inference mode without gradients, CE + distillation, SGD with momentum 0.9
  and weight decay 5e-4 on every parameter."""
  opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
  student.train()
  if teacher is not None:
    teacher.eval()

  def step(x, y):
    logits = student(x)
    if method == "vanilla":
      loss = F.cross_entropy(logits, y)
    else:
      with torch.no_grad():
        t = teacher(x)
      if method == "kd":
        loss = 0.1 * F.cross_entropy(logits, y) + 0.9 * kd_loss(logits, t, 4.0)
      elif method == "dkd":
        loss = F.cross_entropy(logits, y) + dkd_loss(logits, t, y, 1.0, 8.0, 4.0)
      elif method == "rld":
        loss = F.cross_entropy(logits, y) + rld_loss(logits, t, y, 1.0, 8.0, 4.0)
      elif method == "ldrld":
        loss = F.cross_entropy(logits, y) + ldrld_loss(logits, t, 10.5, 7.0, 4.0)
      else:
        raise KeyError(f"no PyTorch reference step for method {method!r}: vanilla, kd, dkd, rld, "
                       "ldrld")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss
  return step
