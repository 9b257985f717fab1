"""One line naming the CPU a benchmark ran on, printed with its figures.

Ratios against PyTorch depend on the machine (BENCHMARKS.md: the same code is
0.91-0.95x PyTorch's step on an AVX-512 Zen 5 and faster than it on an AVX2
Zen 3), so every figure says where it was taken.
"""
import os
import platform


def _cpuinfo() -> dict:
  fields = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if ":" in line:
          key, value = (part.strip() for part in line.split(":", 1))
          fields.setdefault(key, value)
  except OSError:
    pass
  return fields


def describe() -> str:
  """E.g. ``AMD EPYC (family 25 model 1), 2 CPUs, AVX2, no AVX-512``."""
  info = _cpuinfo()
  name = info.get("model name") or platform.processor() or platform.machine()
  if "cpu family" in info and "model" in info:
    name += f" (family {info['cpu family']} model {info['model']})"
  flags = set(info.get("flags", "").split())
  if flags:
    isa = "AVX-512" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags
                                               else "no AVX2")
  else:
    isa = "instruction set unknown"
  return f"{name}, {os.cpu_count()} CPUs, {isa}"


if __name__ == "__main__":
  print(describe())
