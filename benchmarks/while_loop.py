"""Convolution gradients inside a ``while_loop`` on XLA:CPU, against the same
computation called once per iteration from Python.

  python benchmarks/while_loop.py [--reps=5] [--iters=20]

Prints median ms per iteration of: one 3×3 convolution (batch 64, 8×8, 32
channels) forward, its weight gradient and its input gradient, with
``jax.lax.conv_general_dilated`` and with ``rldjax.models.conv`` (what the zoo
uses); and one SGD step of the CIFAR ResNet (zoo layers) at the digits
teacher's and student's widths. Each as a Python loop of single jitted calls
and as one ``lax.fori_loop`` call, in the same process. What it shows
(BENCHMARKS.md, "Several steps per device call"): inside a loop body XLA:CPU
leaves ``lax``'s gradient convolutions in dimension numbers its library
kernels do not take (10-100x slower); ``rldjax.models.conv`` writes its
tangents so that their transposes are in those dimension numbers already.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402
from benchmarks.step_parts import median_ms  # noqa: E402
from rldjax import runtime  # noqa: E402


def per_iteration_ms(body, carry, iters, reps):
  """(Python loop of jitted calls, one fori_loop call): median ms per iteration."""
  import jax
  from jax import lax
  one = jax.jit(lambda c: body(0, c))
  many = jax.jit(lambda c: lax.fori_loop(0, iters, body, c))

  def python_loop():
    c = carry
    for _ in range(iters):
      c = one(c)
    jax.block_until_ready(c)

  return [median_ms(fn, reps) / iters
          for fn in (python_loop, lambda: jax.block_until_ready(many(carry)))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--iters", type=int, default=20)
  args = parser.parse_args()
  runtime.reexec_with_huge_pages()  # as the launcher does
  runtime.set_cpu_flags()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  from rldjax.models import conv as conv_lib
  from rldjax.models.resnet_cifar import CifarResNet
  print(machine.describe())
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 8, 8, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32) * 0.1

  rows = []
  for label, conv_fn in (("lax", lax.conv_general_dilated),
                         ("rldjax", conv_lib.conv_general_dilated)):
    def conv(a, b, f=conv_fn):
      return f(a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    rows += [
        (f"{label} conv forward", lambda i, c, conv=conv: (
            c[0] + 1e-6 * jnp.sum(conv(c[1], c[0])), c[1] * 1.0001)),
        (f"{label} conv weight gradient", lambda i, c, conv=conv: (c[0] - 1e-6 * jax.grad(
            lambda b: jnp.sum(conv(c[1], b) ** 2))(c[0]), c[1] * 1.0001)),
        (f"{label} conv input gradient", lambda i, c, conv=conv: (c[0], c[1] - 1e-6 * jax.grad(
            lambda a: jnp.sum(conv(a, c[0]) ** 2))(c[1]))),
    ]
  print(f"median ms per iteration ({args.iters} iterations, {args.reps} reps)")
  print(f"{'':<48} {'python loop':>12} {'fori_loop':>10} {'ratio':>7}")
  for name, body in rows:
    py, loop = per_iteration_ms(body, (w, x), args.iters, args.reps)
    print(f"{name + ' (64x8x8x32, 3x3)':<48} {py:12.2f} {loop:10.2f} {loop / py:6.1f}x", flush=True)

  images = jnp.asarray(rng.standard_normal((64, 8, 8, 3)), jnp.float32)
  for label, widths, depth_n in (("digits/resnet14 widths (8, 8, 16, 32)", (8, 8, 16, 32), 2),
                                 ("digits/resnet8 widths (2, 2, 4, 8)", (2, 2, 4, 8), 1)):
    model = CifarResNet(depth_n=depth_n, widths=widths, num_classes=10)
    variables = jax.jit(lambda k, m=model: m.init(k, images[:1], train=False))(
        jax.random.key(0, impl="rbg"))

    def sgd(i, params, m=model, bs=variables["batch_stats"]):
      def loss(p):
        logits, _ = m.apply({"params": p, "batch_stats": bs}, images, train=True,
                            mutable=["batch_stats"])
        return jnp.sum(logits ** 2)
      return jax.tree.map(lambda p, g: p - 1e-6 * g, params, jax.grad(loss)(params))
    py, loop = per_iteration_ms(sgd, variables["params"], args.iters, args.reps)
    print(f"{'SGD step, ' + label:<48} {py:12.2f} {loop:10.2f} {loop / py:6.1f}x", flush=True)


if __name__ == "__main__":
  main()
