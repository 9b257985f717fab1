"""Where a distillation step's time goes, rldjax against PyTorch, part by part.

  python benchmarks/step_parts.py [--batch=64] [--reps=8] [--student=cifar/resnet8x4]

Median ms of: the teacher's inference forward (resnet32x4), the student's
training forward + backward (``--student``, resnet8x4 by default; also with
plain ``lax`` convolutions instead of ``rldjax.models.conv``, interleaved; the
PyTorch column has the CIFAR ResNets only), and single layers (a 3×3 convolution
forward + both gradients, a training-mode batch norm forward + backward) at the
three CIFAR stage sizes. Needs the ``torch`` extra for the PyTorch column.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402
from rldjax import runtime  # noqa: E402

SIZES = ((32, 64), (16, 128), (8, 256))


def median_ms(fn, reps):
  fn()
  fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def jax_parts(batch, reps, student_tag="cifar/resnet8x4"):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rldjax import models
  from rldjax.models import batch_norm
  from rldjax.models import conv as conv_lib
  out = {}
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 32, 32, 3)), jnp.float32)
  teacher, student = models.create("cifar/resnet32x4"), models.create(student_tag)
  tv = jax.jit(lambda k: teacher.init(k, x[:1], train=False))(jax.random.key(0))
  sv = jax.jit(lambda k: student.init(k, x[:1], train=False))(jax.random.key(1))
  fwd = jax.jit(lambda v, x: teacher.apply(v, x, train=False))
  out["teacher inference forward"] = median_ms(lambda: fwd(tv, x).block_until_ready(), reps)

  def loss(p, bs, x):
    logits, _ = student.apply({"params": p, "batch_stats": bs}, x, train=True,
                              mutable=["batch_stats"])
    return jnp.sum(logits ** 2)
  grad = jax.jit(jax.grad(loss))
  original = conv_lib.conv_general_dilated
  conv_lib.conv_general_dilated = jax.lax.conv_general_dilated  # traced with plain convs
  try:
    plain = jax.jit(jax.grad(loss)).lower(sv["params"], sv["batch_stats"], x).compile()
  finally:
    conv_lib.conv_general_dilated = original
  run = {"ours": lambda: jax.block_until_ready(grad(sv["params"], sv["batch_stats"], x)),
         "plain": lambda: jax.block_until_ready(plain(sv["params"], sv["batch_stats"], x))}
  times = {"ours": [], "plain": []}
  for r in range(reps):  # interleaved: the difference is what matters here
    for name in (("ours", "plain") if r % 2 == 0 else ("plain", "ours")):
      times[name].append(median_ms(run[name], 1))
  out["student training forward+backward"] = statistics.median(times["ours"])
  out["  same, plain lax convolutions"] = statistics.median(times["plain"])
  for hw, c in SIZES:
    rng = np.random.default_rng(hw)
    a = jnp.asarray(rng.standard_normal((batch, hw, hw, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.float32)
    g = jnp.asarray(rng.standard_normal((batch, hw, hw, c)), jnp.float32)
    conv = lambda a, w: jax.lax.conv_general_dilated(a, w, (1, 1), ((1, 1), (1, 1)),
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    conv_fb = jax.jit(lambda a, w: jax.vjp(conv, a, w)[1](g))
    out[f"conv 3x3 {hw}x{hw}x{c} fwd+bwd"] = median_ms(
        lambda: jax.block_until_ready(conv_fb(a, w)), reps)
    s, b = jnp.ones(c), jnp.zeros(c)
    bn = lambda a, s, b: batch_norm.batch_norm_train(a, s, b)[0]
    bn_fb = jax.jit(lambda a, s, b: jax.vjp(bn, a, s, b)[1](g))
    out[f"batch norm {hw}x{hw}x{c} fwd+bwd"] = median_ms(
        lambda: jax.block_until_ready(bn_fb(a, s, b)), reps)
  return out


def torch_parts(batch, reps, student_tag="cifar/resnet8x4"):
  import numpy as np
  import torch
  from benchmarks import torch_reference
  out = {}
  x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, 32, 32))
                       .astype(np.float32))
  teacher = torch_reference.create("resnet32x4").eval()
  with torch.no_grad():
    out["teacher inference forward"] = median_ms(lambda: teacher(x), reps)
  name = student_tag.split("/")[-1]
  if name in torch_reference.CIFAR_RESNETS:
    student = torch_reference.create(name).train()

    def student_fb():
      student.zero_grad(set_to_none=True)
      (student(x) ** 2).sum().backward()
    out["student training forward+backward"] = median_ms(student_fb, reps)
  for hw, c in SIZES:
    a = torch.randn(batch, c, hw, hw, requires_grad=True)
    g = torch.randn(batch, c, hw, hw)
    conv = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False)
    out[f"conv 3x3 {hw}x{hw}x{c} fwd+bwd"] = median_ms(
        lambda: torch.autograd.grad(conv(a), (a, conv.weight), g), reps)
    bn = torch.nn.BatchNorm2d(c).train()
    out[f"batch norm {hw}x{hw}x{c} fwd+bwd"] = median_ms(
        lambda: torch.autograd.grad(bn(a), (a, bn.weight, bn.bias), g), reps)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--reps", type=int, default=8)
  parser.add_argument("--student", default="cifar/resnet8x4", help="a zoo tag")
  args = parser.parse_args()
  runtime.reexec_with_huge_pages()  # as the launcher does
  runtime.set_cpu_flags()
  ours = jax_parts(args.batch, args.reps, args.student)
  try:
    theirs = torch_parts(args.batch, args.reps, args.student)
  except ImportError:
    theirs = {}
  print(f"{machine.describe()}; median ms, batch {args.batch}, {args.reps} reps, "
        f"student {args.student}")
  print(f"{'part':40s} {'rldjax':>9s} {'torch':>9s}")
  for name, ms in ours.items():
    other = f"{theirs[name]:9.1f}" if name in theirs else "        —"
    print(f"{name:40s} {ms:9.1f} {other}")


if __name__ == "__main__":
  main()
