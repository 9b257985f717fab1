"""Distillation train-step throughput on synthetic data.

  python benchmarks/train_step.py --pair=res32x4_res8x4 --method=rld --batch=64 --dtype=float32

Prints compile time and the median images/s of the sharded step (jit of
shard_map over all local devices) over --reps timed steps, after one warm-up.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import cifar100, imagenet
from rldjax import models
from rldjax.train import config as config_lib, optim, recipe, step as step_lib
from rldjax.train.state import TrainState


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pair", default="res32x4_res8x4",
                      help=f"one of {', '.join(list(cifar100.PAIRS) + list(imagenet.PAIRS))}")
  parser.add_argument("--method", default="rld", choices=config_lib.METHODS)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--reps", type=int, default=20)
  args = parser.parse_args()

  module = imagenet if args.pair in imagenet.PAIRS else cifar100
  c = module.get_config(f"pair={args.pair},method={args.method}")
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  n = c.dataset.num_classes
  size = c.dataset.image_size
  student = models.create(c.student.tag, n, dtype=dtype, bn_axis_name=step_lib.AXIS)
  teacher = models.create(c.teacher.tag, n, dtype=dtype) if args.method != "vanilla" else None
  x = jnp.zeros((1, size, size, 3))
  key = jax.random.key(0, impl="rbg")
  s_vars = jax.jit(lambda k: student.init(k, x, train=False))(key)
  t_vars = jax.jit(lambda k: teacher.init(k, x, train=False))(key) if teacher else None
  tx = optim.sgd(lambda _: 0.05)
  spec = recipe.Recipe.from_config(c)
  mesh = step_lib.data_mesh()
  fn = step_lib.shard(step_lib.make_train_step(student, teacher, spec, tx, 100), mesh, 2,
                      donate=True)
  state = TrainState.create(s_vars["params"], s_vars["batch_stats"], tx, key)
  rng = np.random.default_rng(0)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = {"image": rng.standard_normal((args.batch, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, n, args.batch).astype(np.int32)}
  batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state, t_vars = jax.device_put((state, t_vars), replicated)

  start = time.perf_counter()
  compiled = fn.lower(state, t_vars, batch).compile()
  compile_s = time.perf_counter() - start
  state, m = compiled(state, t_vars, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(args.reps):
    start = time.perf_counter()
    state, m = compiled(state, t_vars, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  med = statistics.median(times)
  print(f"backend={jax.default_backend()} devices={jax.device_count()} pair={args.pair} "
        f"({c.teacher.tag} -> {c.student.tag}) method={args.method} batch={args.batch} "
        f"dtype={args.dtype}")
  print(f"compile: {compile_s:.1f} s")
  print(f"step: median {med * 1e3:.1f} ms over {args.reps}  ->  {args.batch / med:.1f} images/s")


if __name__ == "__main__":
  main()
