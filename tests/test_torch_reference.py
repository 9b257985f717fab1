"""benchmarks/torch_reference.py computes what rldjax computes, so that the
speed ratio of ``benchmarks/train_step.py`` compares the same work: every
CIFAR ResNet of the reference, loaded with the same weights (through
``rldjax.convert``), gives the zoo model's logits in inference and training
mode, and the reference's KD / DKD / RLD / LDRLD losses equal ``rldjax.losses`` (batch
means) on the same logits. Skipped without the ``torch`` extra."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference  # noqa: E402
from rldjax import convert, losses, models  # noqa: E402


def _randomised(name, seed):
  torch.manual_seed(seed)
  net = torch_reference.create(name)
  with torch.no_grad():  # non-trivial running statistics, so inference mode is tested
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  return net


@pytest.mark.parametrize("name", ["resnet8", "resnet8x4", "resnet32x4"])
def test_networks_equal_the_zoo(name):
  net = _randomised(name, seed=3)
  variables = convert.from_torch_state_dict(
      f"cifar/{name}", {k: v.numpy() for k, v in net.state_dict().items()})
  model = models.create(f"cifar/{name}")
  x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  for train in (False, True):
    net.train(train)
    with torch.no_grad():
      ref = net(xt).numpy()
    if train:
      ours, _ = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    else:
      ours = model.apply(variables, jnp.asarray(x), train=False)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0,
                               atol=1e-4 * np.abs(ref).max(), err_msg=f"train={train}")


def test_losses_equal_rldjax():
  rng = np.random.default_rng(1)
  s = rng.standard_normal((16, 100)).astype(np.float32) * 3
  t = rng.standard_normal((16, 100)).astype(np.float32) * 3
  y = rng.integers(0, 100, 16)
  ts, tt, ty = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y)
  values = jax.jit(lambda s, t, y: (  # one program (eager, each operation is compiled apart)
      losses.kd(s, t, temperature=4.0),
      losses.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
      losses.rld(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
      losses.ldrld(s, t, alpha=10.5, beta=7.0, k=7, temperature=4.0)))(s, t, y)
  refs = [torch_reference.kd_loss(ts, tt, 4.0),
          torch_reference.dkd_loss(ts, tt, ty, 1.0, 8.0, 4.0),
          torch_reference.rld_loss(ts, tt, ty, 1.0, 8.0, 4.0),
          torch_reference.ldrld_loss(ts, tt, 10.5, 7.0, 4.0)]
  for ref, value in zip(refs, values, strict=True):
    np.testing.assert_allclose(float(jnp.mean(value)), float(ref), rtol=1e-5)
