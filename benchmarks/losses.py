"""Loss kernel benchmark: median ms of value+grad under jit.

Usage:
  python benchmarks/losses.py                      # all three sizes
  python benchmarks/losses.py --sizes=64x100,512x1000 --reps=20
  python benchmarks/losses.py --chunked=256 --sizes=2048x32000 --dtype=bfloat16
  python benchmarks/losses.py --chunked=256 --sizes=2048x128000 --memory_only

For every loss, prints the median wall time of ``jax.value_and_grad`` of the
batch mean under ``jax.jit`` (compilation excluded, one warm-up call), and its
ratio to ``kd`` measured in the same run. The calls are interleaved (each
round times every loss once, in a shuffled order, after one untimed call that
warms the caches for it), so slow drifts of a shared machine hit every loss
alike; medians, because machines are noisy.

``kd`` is rldjax's Hinton KD, plain autodiff of a log-softmax KL. The row
``kd (optax)`` builds the same loss from ``optax.losses.kl_divergence`` as a
reference point for what a standard KD costs. LDRLD is also compared with a
naive implementation that does one masked softmax over all C classes per rank
pair.

With ``--chunked=ROWS``, each per-example loss is compared with
``losses.chunked(loss, ROWS)``: the temporary memory XLA allocates for the
jitted value and gradient (``memory_analysis()`` of the compiled program) and
the median time, with their ratios, in the same run.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import machine  # noqa: E402

from rldjax import losses  # noqa: E402
from rldjax.losses import _common  # noqa: E402


def naive_ldrld(s, t, k=7, temperature=4.0, alpha=10.5, beta=7.0):
  """Reference-style LDRLD: a separate masked softmax over C for every pair."""
  T = temperature
  _, top = jax.lax.top_k(jax.lax.stop_gradient(s), k)
  w = losses.rank_pair_weights(k)
  total = 0.0
  for i in range(k):
    for j in range(i + 1, k):
      mask = _common.one_hot_mask(top[:, (i, j)], s.shape[-1])
      total = total + w[i, j] * _common.masked_kl(t / T, s / T, mask)
  total = total + _common.masked_kl(t / T, s / T, _common.one_hot_mask(top, s.shape[-1]))
  local = total / (k * (k - 1) / 2 + 1) * T**2
  rntk = _common.masked_kl(t / T, s / T, ~_common.one_hot_mask(top, s.shape[-1])) * T**2
  return alpha * local + beta * rntk


def optax_kd(s, t, temperature=4.0):
  """Hinton KD from optax's KL: T^2 KL(softmax(t/T) || softmax(s/T))."""
  log_student = jax.nn.log_softmax(s / temperature, axis=-1)
  teacher = jax.nn.softmax(t / temperature, axis=-1)
  return optax.losses.kl_divergence(log_student, teacher) * temperature**2


def time_value_and_grad(fns, s, t, y, reps):
  """Median ms per call of jit(value_and_grad(mean(fn))) for each fn, interleaved."""
  # Teacher and labels are arguments, not closed-over constants, so XLA cannot
  # fold the teacher's side away at compile time.
  steps = {}
  for name, fn in fns.items():
    steps[name] = jax.jit(jax.value_and_grad(lambda s, t, y, fn=fn: jnp.mean(fn(s, t, y))))
    jax.block_until_ready(steps[name](s, t, y))  # compile + warm-up
  times = {name: [] for name in fns}
  order = list(steps)
  rng = random.Random(0)
  for _ in range(reps):
    rng.shuffle(order)  # no loss always runs right after the slowest one
    for name in order:
      jax.block_until_ready(steps[name](s, t, y))  # untimed: warm caches for this loss
      start = time.perf_counter()
      jax.block_until_ready(steps[name](s, t, y))
      times[name].append((time.perf_counter() - start) * 1e3)
  return {name: statistics.median(ms) for name, ms in times.items()}


def temp_bytes(fn, s, t, y) -> int:
  """Temporary bytes of the compiled jit(value_and_grad(mean(fn)))."""
  step = jax.jit(jax.value_and_grad(lambda s, t, y: jnp.mean(fn(s, t, y))))
  return step.lower(s, t, y).compile().memory_analysis().temp_size_in_bytes


def chunked_table(size, rows, dtype, reps, memory_only):
  """Each per-example loss, plain and in chunks of ``rows``: memory and time
  (``memory_only``: compiled for the shapes alone, nothing allocated or run)."""
  b, c = (int(x) for x in size.split("x"))
  if memory_only:
    s = t = jax.ShapeDtypeStruct((b, c), dtype)
    y = jax.ShapeDtypeStruct((b,), jnp.int32)
  else:
    rng = np.random.default_rng(0)
    s = jnp.asarray(3 * rng.standard_normal((b, c)), dtype)
    t = jnp.asarray(3 * rng.standard_normal((b, c)), dtype)
    y = jnp.asarray(rng.integers(0, c, b), jnp.int32)
  fns = {}
  for name in ("kd", "dkd", "rld", "ldrld"):
    fns[name] = losses.get(name)
    fns[f"{name} chunked"] = losses.chunked(losses.get(name), rows)
  times = None if memory_only else time_value_and_grad(fns, s, t, y, reps)
  for name in ("kd", "dkd", "rld", "ldrld"):
    plain, chunked = (temp_bytes(fns[n], s, t, y) for n in (name, f"{name} chunked"))
    timing = "" if times is None else (
        f" {times[name]:9.1f} {times[f'{name} chunked']:9.1f} "
        f"{times[f'{name} chunked'] / times[name]:6.2f}")
    print(f"{size:>12} {dtype:>9} {name:>6} {rows:>6} {plain / 1e9:9.3f} {chunked / 1e9:9.3f} "
          f"{chunked / plain:6.3f}{timing}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="64x100,512x1000,4096x32000",
                      help="comma-separated BxC list")
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--k", type=int, default=7)
  parser.add_argument("--skip_naive_above", type=int, default=10**7,
                      help="skip the naive LDRLD loop when B*C exceeds this (it needs "
                           "~40 GB at 4096x32000)")
  parser.add_argument("--chunked", type=int, default=0,
                      help="compare each per-example loss with losses.chunked(loss, ROWS)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="logits dtype of the --chunked comparison")
  parser.add_argument("--memory_only", action="store_true",
                      help="--chunked: compile only and print the memory (no arrays, no timing)")
  args = parser.parse_args()

  print(machine.describe())
  print(f"backend={jax.default_backend()} devices={jax.devices()}")
  if args.chunked:
    print(f"{'B x C':>12} {'dtype':>9} {'loss':>6} {'rows':>6} {'temp GB':>9} {'chunked':>9} "
          f"{'ratio':>6} {'ms':>9} {'chunked':>9} {'ratio':>6}")
    for size in args.sizes.split(","):
      chunked_table(size, args.chunked, args.dtype, args.reps, args.memory_only)
    return
  header = f"{'B x C':>12} {'loss':>16} {'median ms':>10} {'/ kd':>6}"
  print(header)
  print("-" * len(header))
  for size in args.sizes.split(","):
    b, c = (int(x) for x in size.split("x"))
    rng = np.random.default_rng(0)
    s = jnp.asarray(3 * rng.standard_normal((b, c)), jnp.float32)
    t = jnp.asarray(3 * rng.standard_normal((b, c)), jnp.float32)
    y = jnp.asarray(rng.integers(0, c, b), jnp.int32)
    reps = args.reps if b * c < 10**7 else max(3, args.reps // 3)
    fns = {name: losses.get(name) for name in losses.names()}
    fns["ldrld"] = lambda s, t, y: losses.ldrld(s, t, k=args.k)
    fns["kd (optax)"] = lambda s, t, y: optax_kd(s, t)
    if b * c <= args.skip_naive_above:
      fns["ldrld (naive loop)"] = lambda s, t, y: naive_ldrld(s, t, k=args.k)
    results = time_value_and_grad(fns, s, t, y, reps)
    for name, ms in results.items():
      print(f"{size:>12} {name:>18} {ms:10.2f} {ms / results['kd']:6.2f}")
    if "ldrld (naive loop)" in results:
      print(f"{size:>12} {'naive / ldrld':>18} {'':>10} "
            f"{results['ldrld (naive loop)'] / results['ldrld']:6.2f}")
    print()


if __name__ == "__main__":
  main()
