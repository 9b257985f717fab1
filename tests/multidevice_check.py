"""Run in a subprocess with 8 simulated CPU devices (see test_multidevice.py).

The sharded distillation step over an 8-device mesh must equal the same step
on one device with the same global batch, batch statistics included.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rldjax import models  # noqa: E402
from rldjax.train import optim, step as step_lib  # noqa: E402
from rldjax.train.recipe import Recipe  # noqa: E402
from rldjax.train.state import TrainState  # noqa: E402
from tests.evaluation_check import check_evaluate_arrays  # noqa: E402


def main():
  assert jax.device_count() == 8, jax.devices()
  method = sys.argv[1] if len(sys.argv) > 1 else "rld"
  student = models.create("cifar/resnet8", 10, bn_axis_name=step_lib.AXIS)
  teacher = models.create("cifar/resnet8", 10)
  x = jnp.zeros((1, 32, 32, 3))
  s_vars = student.init(jax.random.key(0), x, train=False)
  t_vars = teacher.init(jax.random.key(1), x, train=False)
  tx = optim.sgd(lambda _: 0.1, momentum=0.9, weight_decay=5e-4)
  hparams = {"rld": (("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0)),
             "ldrld": (("k", 4), ("temperature", 4.0))}[method]
  spec = Recipe(method, hparams, ce_weight=1.0, distill_weight=1.0)
  per_device = step_lib.make_train_step(student, teacher, spec, tx, steps_per_epoch=10)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((16, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = step_lib.data_mesh(devices)
    fn = step_lib.shard(per_device, mesh, n_replicated=2)
    state = TrainState.create(s_vars["params"], s_vars["batch_stats"], tx, jax.random.key(2))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    global_batch = {k: jax.make_array_from_process_local_data(sharding, v)
                    for k, v in batch.items()}
    for _ in range(2):
      state, metrics = fn(state, t_vars, global_batch)
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (one, m1), (eight, m8) = results
  for a, b in zip(jax.tree_util.tree_leaves((one.params, one.batch_stats)),
                  jax.tree_util.tree_leaves((eight.params, eight.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=2e-4, atol=2e-5)
  # Not a no-op: parameters and running statistics moved from their initial values.
  assert np.abs(np.asarray(one.params["fc"]["bias"]) - s_vars["params"]["fc"]["bias"]).max() > 1e-3
  assert np.abs(np.asarray(one.batch_stats["bn1"]["var"]) - 1.0).max() > 1e-3
  # Evaluation over 8 devices: 2 full global batches of 16 and a remainder of 5.
  check_evaluate_arrays(eval_batch_size=16, n=37)
  print("MULTIDEVICE OK", method, float(m8["loss"]))


if __name__ == "__main__":
  main()
