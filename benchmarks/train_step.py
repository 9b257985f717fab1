"""Distillation train-step throughput, this project against PyTorch, in one run.

  python benchmarks/train_step.py --pair=res32x4_res8x4 --method=rld --batch=64
  python benchmarks/train_step.py --compare_bn          # project BN vs the textbook one
  python benchmarks/train_step.py --compare_conv        # stored-input weight gradient vs plain
  python benchmarks/train_step.py --compare_residual    # stored residual stream vs not
  python benchmarks/train_step.py --compare_cpu_flags   # with and without the project's XLA:CPU flags
  python benchmarks/train_step.py --compare_huge_pages  # with and without transparent huge pages

Prints the median images/s over --reps interleaved blocks of steps of:

* ``rldjax step``: the sharded step (jit of shard_map) on a prepared batch;
* ``rldjax step + data``: the in-memory path's step, which also gathers the
  batch from the device-resident split and crops/flips it on device;
* ``torch step``: the same two networks and loss in PyTorch
  (benchmarks/torch_reference.py; when the ``torch`` extra is installed), on
  the GPU when JAX runs on one and PyTorch has CUDA (``--torch_device``;
  each step then ends with ``torch.cuda.synchronize()``, as the JAX steps end
  with ``block_until_ready``),

timed interleaved (alternating order) so that machine noise hits all alike,
and their ratios. ``--compare_bn`` adds the step with a textbook float32 batch
norm (autodiff through (x - mean) * rsqrt(var + eps)); ``--compare_conv`` adds
the step with plain ``lax`` convolutions (whose weight gradients recompute
their fused input in transposed order, ``rldjax/models/conv.py``);
``--compare_residual`` adds the step with the zoo's residual streams left to
XLA (``rldjax.models.layers.residual_stream`` never storing);
``--compare_cpu_flags``
runs this script in subprocesses alternately with and without the flags of
``rldjax.runtime.CPU_FLAGS`` (flags are fixed when JAX starts);
``--compare_huge_pages`` times every step alternately with the process's
transparent huge pages allowed and disallowed (``prctl(PR_SET_THP_DISABLE)``,
which applies to later page faults), with minor page faults per step.

Like the launcher, the script first restarts itself with glibc's huge-page
tunable where the kernel's THP mode is ``madvise``
(``rldjax.runtime.reexec_with_huge_pages``): both frameworks then run with it.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402
from rldjax import runtime  # noqa: E402  (before JAX starts: flags)


def parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--pair", default="res32x4_res8x4")
  p.add_argument("--method", default="rld", choices=["vanilla", "kd", "dkd", "rld", "ldrld"])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--torch_device", default="auto", choices=["auto", "cpu", "cuda"],
                 help="where the PyTorch step runs (auto: cuda when JAX runs on a GPU and "
                 "this PyTorch has CUDA, else cpu)")
  p.add_argument("--compare_bn", action="store_true")
  p.add_argument("--compare_conv", action="store_true")
  p.add_argument("--compare_residual", action="store_true")
  p.add_argument("--compare_cpu_flags", action="store_true")
  p.add_argument("--compare_huge_pages", action="store_true")
  p.add_argument("--rounds", type=int, default=3, help="--compare_cpu_flags: alternations")
  p.add_argument("--cpu_flags", default="project", choices=["project", "none"])
  p.add_argument("--json", action="store_true", help="print one JSON line (subprocess mode)")
  args = p.parse_args()
  for name in ("batch", "reps", "rounds"):
    if getattr(args, name) < 1:
      p.error(f"--{name}: need at least 1, got {getattr(args, name)}")
  return args


def textbook_batch_norm(x, scale, bias, epsilon=1e-5, axis_name=None):
  """The direct float32 evaluation (what the project replaced), for timing."""
  import jax
  import jax.numpy as jnp
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  if axis_name:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  if axis_name:
    var = jax.lax.pmean(var, axis_name)
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var


def build_jax(args, batch_norm_fn=None, plain_conv=False, plain_residual=False):
  """(step, step with data, compile seconds, config); ``batch_norm_fn``,
  ``plain_conv`` or ``plain_residual`` trace the programs anew with that batch
  norm / without the stored-input convolution / without stored residual
  streams."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from experiments.configs import cifar100
  from rldjax.models import batch_norm, conv, resnet_cifar, shufflenet, wrn
  from rldjax import distributed
  from rldjax.train import programs, recipe, state as state_lib
  from rldjax.data import order
  c = cifar100.get_config(f"pair={args.pair},method={args.method}")
  c.batch_size = args.batch
  c.student.dtype = args.dtype
  original, original_conv = batch_norm.batch_norm_train, conv.conv_general_dilated
  residual_users = (resnet_cifar, shufflenet, wrn)
  original_residual = [m.residual_stream for m in residual_users]
  if batch_norm_fn is not None or plain_conv or plain_residual:  # traced anew
    programs._build.cache_clear()  # pylint: disable=protected-access
  if batch_norm_fn is not None:
    batch_norm.batch_norm_train = batch_norm_fn
  if plain_conv:
    conv.conv_general_dilated = jax.lax.conv_general_dilated
  if plain_residual:
    for m in residual_users:
      m.residual_stream = lambda x, store=True: x
  try:
    p = programs.build(c, steps_per_epoch=10**6)
    rng = jax.random.key(0, impl="rbg")
    v = p.init(rng)
    st = distributed.replicate(
        p.mesh, state_lib.TrainState.create(v["params"], v["batch_stats"], p.tx, rng))
    size, n = c.dataset.image_size, c.dataset.num_classes
    tv = None
    if p.teacher is not None:
      tv = distributed.replicate(p.mesh, jax.jit(lambda k: p.teacher.init(
          k, jnp.zeros((1, size, size, 3)), train=False))(rng))
    data_rng = np.random.default_rng(0)
    batch = {"image": data_rng.standard_normal((args.batch, size, size, 3)).astype(np.float32),
             "label": data_rng.integers(0, n, args.batch).astype(np.int32)}
    sharding = jax.sharding.NamedSharding(p.mesh, jax.sharding.PartitionSpec("data"))
    batch = {k: jax.make_array_from_process_local_data(sharding, x) for k, x in batch.items()}
    images = distributed.replicate(p.mesh, data_rng.integers(0, 256, (4096, size, size, 3),
                                                       dtype=np.uint8))
    labels = distributed.replicate(p.mesh, data_rng.integers(0, n, 4096).astype(np.int32))
    key = distributed.replicate(p.mesh, order.data_key_data(0))
    weights = distributed.replicate(p.mesh, recipe.Recipe.from_config(c).weights())
    perm = p.epoch_permutation(key, 0, 4096)
    t0 = time.perf_counter()
    step = p.train_step.lower(st, tv, weights, batch).compile()
    compile_s = time.perf_counter() - t0
    with_data = p.train_step_indexed.lower(st, tv, weights, key, images, labels, perm).compile()
    state = {"s": st}

    def run_step():
      state["s"], m = step(state["s"], tv, weights, batch)
      jax.block_until_ready(m)

    def run_with_data():
      state["s"], m = with_data(state["s"], tv, weights, key, images, labels, perm)
      jax.block_until_ready(m)
    return run_step, run_with_data, compile_s, c
  finally:
    batch_norm.batch_norm_train = original
    conv.conv_general_dilated = original_conv
    for m, fn in zip(residual_users, original_residual):
      m.residual_stream = fn


def build_torch(args, c):
  import numpy as np
  import torch
  from benchmarks import torch_reference
  student_name, teacher_name = c.student.tag.split("/")[1], c.teacher.tag.split("/")[1]
  device = torch_device(args)
  if device == "cuda":
    torch.backends.cudnn.benchmark = True  # as the published tools/train.py (mdistiller) sets it
  student = torch_reference.create(student_name, c.dataset.num_classes).to(device)
  teacher = torch_reference.create(teacher_name, c.dataset.num_classes).to(device) \
      if args.method != "vanilla" else None
  step = torch_reference.make_step(student, teacher, args.method)
  rng = np.random.default_rng(0)
  size = c.dataset.image_size
  x = torch.from_numpy(rng.standard_normal((args.batch, 3, size, size)).astype(np.float32))
  y = torch.from_numpy(rng.integers(0, c.dataset.num_classes, args.batch))
  x, y = x.to(device), y.to(device)

  def run():
    step(x, y)
    if device == "cuda":
      torch.cuda.synchronize()  # CUDA kernels run asynchronously: time them to the end
  return run


def torch_device(args) -> str:
  """``--torch_device``, or by default the GPU when JAX runs on one and this
  PyTorch build has CUDA (the goal compares the two on the same GPU), else the CPU."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  if args.torch_device != "auto":
    return args.torch_device
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def timed(fn, block: int = 3):
  """Seconds per step over a block of ``block`` consecutive steps, after one
  untimed step: the first step after the other framework ran pays for its
  caches and spinning worker threads."""
  fn()
  t0 = time.perf_counter()
  for _ in range(block):
    fn()
  return (time.perf_counter() - t0) / block


def measure(runners: dict, reps: int) -> dict:
  """Median seconds per step of each runner, blocks interleaved in alternating order."""
  for fn in runners.values():  # warm-up
    fn()
  times = {k: [] for k in runners}
  names = list(runners)
  for r in range(reps):
    for name in (names if r % 2 == 0 else names[::-1]):
      times[name].append(timed(runners[name]))
  return {k: statistics.median(v) for k, v in times.items()}


PR_SET_THP_DISABLE = 41  # linux/prctl.h


def measure_huge_pages(runners: dict, reps: int) -> dict:
  """Like :func:`measure`, each block run with transparent huge pages
  allowed and, alternately, disallowed for this process: median seconds and
  minor page faults per step, keyed ``(name, "huge pages" | "4 KiB pages")``."""
  libc = ctypes.CDLL(None, use_errno=True)
  for fn in runners.values():
    fn()
  out = {}
  names = list(runners)
  for r in range(reps):
    for pages in (("huge pages", "4 KiB pages") if r % 2 == 0 else ("4 KiB pages", "huge pages")):
      if libc.prctl(PR_SET_THP_DISABLE, int(pages == "4 KiB pages"), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE) failed")
      for name in (names if r % 4 < 2 else names[::-1]):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = timed(runners[name])
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4  # 1 + 3 steps
        out.setdefault((name, pages), []).append((seconds, faults))
  libc.prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0)
  return {k: (statistics.median(s for s, _ in v), statistics.median(f for _, f in v))
          for k, v in out.items()}


def compare_cpu_flags(args):
  base = [sys.executable, os.path.abspath(__file__), f"--pair={args.pair}",
          f"--method={args.method}", f"--batch={args.batch}", f"--dtype={args.dtype}",
          f"--reps={args.reps}", "--no_torch", "--json"]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  results = {"project": [], "none": []}
  for r in range(args.rounds):
    for mode in (("project", "none") if r % 2 == 0 else ("none", "project")):
      out = subprocess.run(base + [f"--cpu_flags={mode}"], env=env, capture_output=True,
                           text=True, check=True)
      results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(machine.describe())
  print(f"XLA:CPU flags {runtime.CPU_FLAGS}, {args.rounds} alternating subprocess rounds, "
        f"pair={args.pair} method={args.method} batch={args.batch} {args.dtype}")
  for key in ("rldjax step", "rldjax step + data"):
    on = statistics.median(r[key] for r in results["project"])
    off = statistics.median(r[key] for r in results["none"])
    print(f"  {key:20s} with flags {args.batch / on:7.1f} img/s   without {args.batch / off:7.1f}"
          f" img/s   speed-up {off / on:.2f}x")


def main():
  args = parse()
  if not args.json:  # --json: a subprocess of --compare_cpu_flags, started with it
    runtime.reexec_with_huge_pages()
  from experiments import exit_status
  from experiments.configs import cifar100
  # An unknown pair or method ends as the launcher ends (``error: ...``, exit 2).
  exit_status.exit_on_run_error(cifar100.get_config, f"pair={args.pair},method={args.method}")
  if args.compare_cpu_flags:
    compare_cpu_flags(args)
    return
  added = runtime.set_cpu_flags() if args.cpu_flags == "project" else []
  import jax
  run_step, run_with_data, compile_s, c = build_jax(args)
  runners = {"rldjax step": run_step, "rldjax step + data": run_with_data}
  if args.compare_bn:
    textbook_step, _, _, _ = build_jax(args, textbook_batch_norm)
    runners["rldjax step, textbook BN"] = textbook_step
  if args.compare_conv:
    plain_step, _, _, _ = build_jax(args, plain_conv=True)
    runners["rldjax step, plain conv"] = plain_step
  if args.compare_residual:
    plain_step, _, _, _ = build_jax(args, plain_residual=True)
    runners["rldjax step, residual unstored"] = plain_step
  have_torch = False
  if not args.no_torch:
    try:
      import torch  # noqa: F401
      have_torch = True
    except ImportError:
      print("(torch not installed: pip install -e '.[torch]' for the PyTorch reference)")
  if have_torch:
    try:
      runners["torch step"] = build_torch(args, c)
    except KeyError as err:  # the reference has the CIFAR ResNets only
      print(f"({err.args[0]}: no torch column)")
      have_torch = False
  if args.compare_huge_pages:
    report_huge_pages(args, c, runners, have_torch, added)
    return
  medians = measure(runners, args.reps)
  if args.json:
    print(json.dumps(medians))
    return
  print(machine.describe())
  print(f"backend={jax.default_backend()} devices={jax.device_count()} pair={args.pair} "
        f"({c.teacher.tag} -> {c.student.tag}) method={args.method} batch={args.batch} "
        f"dtype={args.dtype} XLA flags added: {added or 'none'}")
  print(f"compile: {compile_s:.1f} s; medians over {args.reps} interleaved reps")
  ref = medians["rldjax step"]
  for name, sec in medians.items():
    print(f"  {name:26s} {sec * 1e3:8.1f} ms  {args.batch / sec:8.1f} img/s  "
          f"({ref / sec:.2f}x of rldjax step)")
  if have_torch:
    print(f"rldjax step / torch step throughput ratio: {medians['torch step'] / ref:.2f} "
          f"(torch on {torch_device(args)})")


def report_huge_pages(args, c, runners, have_torch, added):
  import jax  # pylint: disable=import-outside-toplevel
  mode = runtime.transparent_huge_pages_mode()
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  print(machine.describe())
  print(f"THP mode {mode}; GLIBC_TUNABLES={tunables or '(none)'}; backend={jax.default_backend()}"
        f" pair={args.pair} method={args.method} batch={args.batch} dtype={args.dtype}"
        f" XLA flags added: {added or 'none'}")
  if mode not in ("always", "madvise") or (mode == "madvise"
                                           and runtime.HUGE_PAGES_TUNABLE not in tunables):
    print("no transparent huge pages for this process to turn on and off: nothing to compare")
    return
  runners = {k: v for k, v in runners.items() if k in ("rldjax step", "torch step")}
  result = measure_huge_pages(runners, args.reps)
  print(f"medians over {args.reps} alternating reps (blocks of 3 steps)")
  for name in runners:
    (on, faults_on), (off, faults_off) = result[(name, "huge pages")], result[(name, "4 KiB pages")]
    print(f"  {name:12s} huge pages {on * 1e3:8.1f} ms ({faults_on:8.0f} faults/step)   "
          f"4 KiB pages {off * 1e3:8.1f} ms ({faults_off:8.0f} faults/step)   "
          f"speed-up {off / on:.3f}x")
  if have_torch:
    for pages in ("huge pages", "4 KiB pages"):
      ratio = result[("torch step", pages)][0] / result[("rldjax step", pages)][0]
      print(f"rldjax step / torch step throughput ratio, {pages}: {ratio:.2f}")


if __name__ == "__main__":
  main()
