"""benchmarks/machine.py names the CPU that benchmark figures come from: the
model, the CPU count and the widest vector ISA, read from /proc/cpuinfo
(rldjax.machine)."""
import os

from benchmarks import machine
from rldjax import machine as rldjax_machine


def test_describe_names_cpu_count_and_vector_isa(tmp_path, monkeypatch):
  assert f", {os.cpu_count()} CPUs, " in machine.describe()
  fake = {"model name": "AMD EPYC 9B45", "cpu family": "26", "model": "2",
          "flags": "fpu avx2 avx512f fma"}
  monkeypatch.setattr(rldjax_machine, "cpu_info", lambda: fake)
  assert machine.describe() == f"AMD EPYC 9B45 (family 26 model 2), {os.cpu_count()} CPUs, AVX-512"
  fake["flags"] = "fpu avx2 fma"
  assert machine.describe().endswith("CPUs, AVX2, no AVX-512")
  fake["flags"] = "fpu sse2"
  assert machine.describe().endswith("CPUs, no AVX2")
  monkeypatch.setattr(rldjax_machine, "cpu_info", dict)
  assert machine.describe().endswith("CPUs, instruction set unknown")
