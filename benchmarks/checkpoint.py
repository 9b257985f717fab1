"""Cost of one durable Orbax checkpoint of a real train state, packed vs per leaf.

  python benchmarks/checkpoint.py [--student=digits/resnet8] [--reps=10]

Builds the :class:`TrainState` of ``--student`` (params, batch statistics, SGD
momentum, best model, sums: what every run checkpoints), then times, in
alternating order in one process, ``manager.save`` + ``wait_until_finished``
into a fresh directory of:

* ``packed``: what ``rldjax.train.checkpoint.save`` writes (one 1-D array per
  dtype, ``checkpoint.pack``);
* ``per leaf``: the tree itself as one Orbax item (the format before packing).

Prints the number of arrays and the median milliseconds of each: until
``save`` returns (what a single-process run's steps wait: the rest is written
in the background) and until the checkpoint is durable (what the steps of a
multi-process run wait: those save synchronously, ``create_manager``).
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--student", default="digits/resnet8")
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args()
  from rldjax import models
  if args.reps < 1:
    parser.error(f"--reps: need at least 1, got {args.reps}")
  if args.student not in models.tags():
    parser.error(f"--student: unknown model tag {args.student!r}; known: {', '.join(models.tags())}")
  import jax
  import jax.numpy as jnp
  import optax
  import orbax.checkpoint as ocp
  from rldjax.train import checkpoint
  from rldjax.train.state import TrainState
  checkpoint.quiet_orbax_logs()
  model = models.create(args.student)
  size = models.INPUT_SIZE[args.student]
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  state = TrainState.create(variables["params"], variables["batch_stats"],
                            optax.sgd(0.1, momentum=0.9), jax.random.key(1))
  history = [{"epoch": 1, "top1": 50.0}]

  def packed(manager):
    checkpoint.save(manager, state, history, metrics={"top1": 50.0}, force=True)

  def per_leaf(manager):
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            history=ocp.args.JsonSave(history)),
                 metrics={"top1": 50.0}, force=True)

  root = tempfile.mkdtemp(prefix="rldjax_ckpt_bench_")
  runners = {"packed": packed, "per leaf": per_leaf}
  times = {k: [] for k in runners}
  returned = {k: [] for k in runners}
  try:
    for r in range(args.reps + 1):
      for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
        directory = os.path.join(root, f"{r}_{name.replace(' ', '_')}")
        manager = checkpoint.create_manager(directory)
        t0 = time.perf_counter()
        runners[name](manager)
        t_return = time.perf_counter() - t0
        manager.wait_until_finished()
        seconds = time.perf_counter() - t0
        manager.close()
        shutil.rmtree(directory)
        if r:  # the first round warms up both
          times[name].append(seconds)
          returned[name].append(t_return)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  leaves = len(jax.tree_util.tree_leaves(state))
  print(f"{args.student} train state: {leaves} arrays, "
        f"{sum(x.size for x in jax.tree_util.tree_leaves(state)) * 4 / 1e6:.2f} MB; "
        f"milliseconds until save returns / until durable (wait_until_finished), "
        f"median of {args.reps}")
  for name, arrays in (("packed", len(checkpoint.pack(state))), ("per leaf", leaves)):
    print(f"  {name} ({arrays} arrays)  {1e3 * statistics.median(returned[name]):7.1f} / "
          f"{1e3 * statistics.median(times[name]):7.1f} ms")


if __name__ == "__main__":
  main()
