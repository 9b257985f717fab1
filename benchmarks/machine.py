"""One line naming the CPU a benchmark ran on, printed with its figures.

Ratios against PyTorch depend on the machine (BENCHMARKS.md: the same code is
0.91-0.95x PyTorch's step on an AVX-512 Zen 5 and faster than it on an AVX2
Zen 3), so every figure says where it was taken.
"""
import os

from rldjax import machine


def describe() -> str:
  """E.g. ``AMD EPYC (family 25 model 1), 2 CPUs, AVX2, no AVX-512``."""
  info = machine.cpu_info()
  return f"{machine.cpu_model(info)}, {os.cpu_count()} CPUs, {machine.vector_isa(info)}"


if __name__ == "__main__":
  print(describe())
