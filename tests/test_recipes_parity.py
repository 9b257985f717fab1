"""The published launch recipes (../shared/parity/recipes_seed1.npz).

Each case builds its config exactly as a user would (the per-pair config file
for CIFAR-100, ``imagenet.py:pair=...`` for ImageNet) and checks what
:func:`rldjax.train.objective` returns at epochs 1, 7, 20 and 100 (value
within 1e-4·(1 + |ref|), gradient w.r.t. the student logits within 1e-3 of
its largest entry) and :func:`rldjax.train.learning_rate` for every epoch
(rtol 1e-6), plus the optax schedule the optimiser is built with.
"""
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import train
from rldjax.train import optim
from tests.conftest import PARITY_DIR, computed_once, parity_file

RECIPES = PARITY_DIR / "recipes_seed1.npz"


def _keys():
  if not RECIPES.exists():
    return ["fixture-absent"]
  return json.loads(str(np.load(RECIPES)["index"]))


@pytest.fixture(scope="module")
def recipes():
  return np.load(parity_file("recipes_seed1.npz"))


def user_config(key):
  dataset, pair, method = key.split("/")
  if dataset == "cifar100":
    module = importlib.import_module(f"experiments.configs.cifar100_{pair}")
    config = module.get_config(f"method={method}")
    # The per-pair file and the shared builder agree.
    shared = importlib.import_module("experiments.configs.cifar100").get_config(
        f"pair={pair},method={method}")
    assert config.to_dict() == shared.to_dict()
    return config
  return importlib.import_module("experiments.configs.imagenet").get_config(
      f"pair={pair},method={method}")


@pytest.fixture(scope="module")
def objectives(recipes, tmp_path_factory):
  """``{key: (values, student-logit gradients)}`` at the fixture's epochs, for
  every key, from one jitted program (each key's config is a constant of it;
  the epochs are a vmapped argument): one compilation instead of one per key,
  once per session."""
  return computed_once(tmp_path_factory, "recipes_parity", lambda: _objectives(recipes))


def _objectives(recipes):
  configs = {key: user_config(key) for key in _keys()}

  def run(inputs, epochs):
    out = {}
    for key, config in configs.items():
      student, teacher, labels = inputs[key]
      value_and_grad = jax.value_and_grad(
          lambda s, e, config=config, teacher=teacher, labels=labels: train.objective(
              config, s, teacher, labels, e))
      out[key] = jax.vmap(value_and_grad, in_axes=(None, 0))(student, epochs)
    return out
  inputs = {key: (jnp.asarray(recipes[f"{key}/student"], jnp.float32),
                  jnp.asarray(recipes[f"{key}/teacher"], jnp.float32),
                  jnp.asarray(recipes[f"{key}/labels"], jnp.int32)) for key in configs}
  return jax.device_get(jax.jit(run)(inputs, jnp.asarray(recipes["epochs"], jnp.int32)))


@pytest.mark.parametrize("key", _keys())
def test_published_recipe(key, recipes, objectives):
  config = user_config(key)
  values, grads = objectives[key]
  for i, epoch in enumerate(np.asarray(recipes["epochs"])):
    value, grad = values[i], grads[i]
    ref, ref_grad = recipes[f"{key}/total"][i], recipes[f"{key}/grad"][i]
    assert abs(float(value) - ref) <= 1e-4 * (1 + abs(ref)), (key, int(epoch), float(value), ref)
    err = np.max(np.abs(np.asarray(grad, np.float64) - ref_grad)) / np.max(np.abs(ref_grad))
    assert err <= 1e-3, (key, int(epoch), err)

  ref_lr = recipes[f"{key}/lr"]
  assert config.num_epochs == len(ref_lr)
  got = np.asarray(jax.vmap(lambda e: train.learning_rate(config, e))(
      jnp.arange(1, len(ref_lr) + 1, dtype=jnp.int32)))
  np.testing.assert_allclose(got, ref_lr, rtol=1e-6, err_msg=key)
  # The optimiser's schedule is the same function of the step.
  sched = optim.schedule(config, steps_per_epoch=3)
  steps = np.arange(len(ref_lr) * 3)
  np.testing.assert_allclose(np.asarray(jax.vmap(sched)(steps)), np.repeat(ref_lr, 3),
                             rtol=1e-6, err_msg=key)
