"""Two training steps of kd, dkd, rld and ldrld against the published code
(../shared/parity/step_seed11.npz): the total losses and the student's
inference logits after two steps, within 1e-3 of the largest logit."""
import json

import jax
import numpy as np
import pytest

from rldjax import convert, distributed, models
from rldjax.train import optim, step as step_lib
from rldjax.train.recipe import Recipe
from rldjax.train.state import TrainState
from tests.conftest import parity_file
from tests.test_models_parity import recipe_state_dict

# The fixture's losses: distillation terms at full weight (no warm-up factor).
METHODS = {
    "kd": Recipe("kd", (("temperature", 4.0),), ce_weight=0.1, distill_weight=0.9),
    "dkd": Recipe("dkd", (("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0)),
                  distill_weight=1.0),
    "rld": Recipe("rld", (("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0),
                          ("confidence_temperature", 4.0)), distill_weight=1.0),
    "ldrld": Recipe("ldrld", (("alpha", 10.5), ("beta", 7.0), ("k", 7), ("temperature", 4.0),
                              ("rank_by", "student")), distill_weight=1.0),
}


@pytest.fixture(scope="module")
def setup():
  manifest = json.loads(parity_file("models_seed11.json").read_text())["models"]
  data = np.load(parity_file("step_seed11.npz"))
  student_vars = convert.from_torch_state_dict(
      "cifar/resnet8x4", recipe_state_dict(manifest["cifar/resnet8x4"]["state_dict"], 11))
  teacher_vars = convert.from_torch_state_dict(
      "cifar/resnet32x4", recipe_state_dict(manifest["cifar/resnet32x4"]["state_dict"], 12))
  return data, student_vars, teacher_vars


@pytest.mark.parametrize("method", list(METHODS))
def test_two_steps_match_published(method, setup):
  data, student_vars, teacher_vars = setup
  student, teacher = models.create("cifar/resnet8x4"), models.create("cifar/resnet32x4")
  tx = optim.sgd(lambda _: 0.05, momentum=0.9, weight_decay=5e-4)
  state = TrainState.create(student_vars["params"], student_vars["batch_stats"], tx,
                            jax.random.key(0))
  mesh = step_lib.data_mesh(jax.devices()[:1])
  train_step = step_lib.shard(
      step_lib.make_train_step(student, teacher, METHODS[method], tx, steps_per_epoch=100),
      mesh, n_replicated=2)
  # Placed as the training loop places them, so the step compiles once.
  state, teacher_vars = distributed.replicate(mesh, (state, teacher_vars))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = {"image": jax.device_put(data["images_nchw"].transpose(0, 2, 3, 1), sharding),
           "label": jax.device_put(data["labels"].astype(np.int32), sharding)}
  got = []
  for _ in range(2):
    state, metrics = train_step(state, teacher_vars, batch)
    got.append(float(metrics["loss"]))
  assert train_step._cache_size() == 1  # pylint: disable=protected-access
  ref_losses = data[f"{method}/losses"]
  np.testing.assert_allclose(got, ref_losses, rtol=1e-3)
  logits = jax.jit(lambda v, x: student.apply(v, x, train=False))(
      {"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
  ref = data[f"{method}/eval_logits_after_2_steps"]
  err = np.max(np.abs(np.asarray(logits) - ref)) / np.max(np.abs(ref))
  assert err <= 1e-3, f"{method}: logits after 2 steps off by {err:.3g} of the largest logit"
