"""Run in a subprocess with 8 simulated CPU devices (see test_multidevice.py).

The sharded distillation step over an 8-device mesh must equal the same step
on one device with the same global batch, batch statistics included. Compared
in float64, where the two agree to rounding (~1e-16): in float32 their
different summation orders (batch-norm and gradient sums over 8 shards or
over the whole batch) differ by ~1e-7, which a ReLU input within rounding of
zero turns into a different update (measured: a 1-ulp change of the initial
weights took the float32 difference after two steps from 2e-7 to 6e-4, while
float64 stayed at 4e-16). Float32 sharded training is compared bit for bit
across process layouts in test_multiprocess.py.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rldjax import distributed, models  # noqa: E402
from rldjax.train import optim, step as step_lib  # noqa: E402
from rldjax.train.recipe import Recipe  # noqa: E402
from rldjax.train.state import TrainState  # noqa: E402
from tests.evaluation_check import check_evaluate_arrays  # noqa: E402


def initial_variables():
  """float64 copies of resnet8's initial variables (student, teacher). Flax
  creates parameters in float32; jitted (one compilation, not one per
  operation), from rbg keys as the launcher's (threefry initialisers take ~5x
  longer to compile on XLA:CPU)."""
  model = models.create("cifar/resnet8", 10)
  init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))
  to64 = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
  return to64(init(jax.random.key(0, impl="rbg"))), to64(init(jax.random.key(1, impl="rbg")))


def two_steps(method, devices, s_vars, t_vars):
  """Parameters, batch statistics and metrics after two float64 steps."""
  f64 = jnp.float64
  student = models.create("cifar/resnet8", 10, bn_axis_name=step_lib.AXIS, dtype=f64)
  teacher = models.create("cifar/resnet8", 10, dtype=f64)
  tx = optim.sgd(lambda _: 0.1, momentum=0.9, weight_decay=5e-4)
  hparams = {"rld": (("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0)),
             "ldrld": (("k", 4), ("temperature", 4.0))}[method]
  spec = Recipe(method, hparams, ce_weight=1.0, distill_weight=1.0)
  per_device = step_lib.make_train_step(student, teacher, spec, tx, steps_per_epoch=10)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((16, 32, 32, 3)),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  mesh = step_lib.data_mesh(devices)
  fn = step_lib.shard(per_device, mesh, n_replicated=2)
  state = TrainState.create(s_vars["params"], s_vars["batch_stats"], tx, jax.random.key(2))
  # Placed as the training loop places them.
  state, t_vars = distributed.replicate(mesh, (state, t_vars))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  global_batch = {k: jax.make_array_from_process_local_data(sharding, v)
                  for k, v in batch.items()}
  for _ in range(2):
    state, metrics = fn(state, t_vars, global_batch)
  # The step returns a state of the types it took (float32 epoch sums of
  # float64 metrics): the second call reuses the first's program.
  assert fn._cache_size() == 1, fn._cache_size()  # pylint: disable=protected-access
  return jax.device_get(state), jax.device_get(metrics)


def check_method(method, initial, teacher):
  with jax.enable_x64(True):
    one, m1 = two_steps(method, jax.devices()[:1], initial, teacher)
    eight, m8 = two_steps(method, jax.devices(), initial, teacher)
  for a, b in zip(jax.tree_util.tree_leaves((one.params, one.batch_stats)),
                  jax.tree_util.tree_leaves((eight.params, eight.batch_stats))):
    assert a.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
  # The step's losses take float64 logits as they are (float32 ones, as the
  # published step, stay float32): float32 losses made this comparison
  # depend on XLA:CPU rounding a row's transcendental functions the same in
  # a batch of 16 as in one of 2, which a change of the losses' binary KL
  # broke (1 float32 ulp, parameters 2e-8 apart after two steps).
  assert m1["loss"].dtype == m8["loss"].dtype == np.float64
  for k in m1:  # summed in another order
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-6, atol=1e-7)
  # Not a no-op: parameters and running statistics moved from their initial values.
  assert np.abs(np.asarray(one.params["fc"]["bias"]) - initial["params"]["fc"]["bias"]).max() > 1e-3
  assert np.abs(np.asarray(one.batch_stats["bn1"]["var"]) - 1.0).max() > 1e-3
  print("MULTIDEVICE OK", method, float(m8["loss"]), flush=True)


def main():
  """Checks each method named on the command line (default: rld and ldrld)
  in this one process, then the 8-device evaluation."""
  assert jax.device_count() == 8, jax.devices()
  with jax.enable_x64(True):
    initial, teacher = initial_variables()
  for method in sys.argv[1:] or ["rld", "ldrld"]:
    check_method(method, initial, teacher)
  # Evaluation over 8 devices: 2 full global batches of 16 and a remainder of 5.
  check_evaluate_arrays(eval_batch_size=16, n=37)
  print("EVALUATION OK", flush=True)


if __name__ == "__main__":
  main()
