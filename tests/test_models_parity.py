"""The Flax zoo against the published PyTorch models
(../shared/parity/models_seed11.json / .npz).

For each of the 27 models: the parity README's weight recipe gives a PyTorch
state_dict, the converter maps it to Flax, and the Flax model reproduces the
inference logits, the training-mode logits and the inference logits after one
training-mode pass (running statistics updated) within 1e-4 of the largest
absolute logit. Parameter counts, names, shapes and order match the manifest.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rldjax import convert, models
from tests.conftest import PARITY_DIR, absent_reason, parity_file

REL_TOL = 1e-4  # of the largest absolute logit (ARCHITECTURES.md §14)


def recipe_state_dict(entries, seed):
  """The parity README's weight recipe, entry i with shape S."""
  state = {}
  for i, (name, shape) in enumerate(entries):
    g = np.random.default_rng([seed, i]).standard_normal(shape)
    if len(shape) >= 2:
      value = g * np.sqrt(2.0 / np.prod(shape[1:]))
    elif name.endswith("running_var"):
      value = 1 + 0.1 * np.abs(g)
    elif name.endswith("running_mean") or name.endswith("bias"):
      value = 0.1 * g
    else:
      value = 1 + 0.1 * g
    state[name] = value.astype(np.float32)
  return state


def recipe_images(seed, size):
  x = np.random.default_rng([seed, 999999]).standard_normal((4, 3, size, size))
  return x.astype(np.float32).transpose(0, 2, 3, 1)


def _tags():
  path = PARITY_DIR / "models_seed11.json"
  if not path.exists():
    return [pytest.param(None, marks=pytest.mark.skip(
        reason=absent_reason(path)))]
  tags = json.loads(path.read_text())["models"]
  return [pytest.param(t, id=t, marks=[pytest.mark.slow] if t.startswith("imagenet/")
                       or t in ("cifar/ResNet50", "cifar/vgg19") else []) for t in tags]


@pytest.fixture(scope="module")
def manifest():
  return json.loads(parity_file("models_seed11.json").read_text())


@pytest.fixture(scope="module")
def logits():
  return np.load(parity_file("models_seed11.npz"))


def assert_logits_close(actual, ref, what):
  scale = np.max(np.abs(ref))
  err = np.max(np.abs(np.asarray(actual, np.float64) - ref)) / scale
  assert err <= REL_TOL, f"{what}: max |diff| = {err:.3g} of the largest logit"


@pytest.mark.parametrize("tag", _tags())
def test_model_matches_published(tag, manifest, logits):
  entry = manifest["models"][tag]
  seed = manifest["seed"]
  state = recipe_state_dict(entry["state_dict"], seed)
  variables = convert.from_torch_state_dict(tag, state)
  module = models.create(tag, entry["num_classes"])
  n_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"]))
  assert n_params == entry["num_params"]

  # Names, shapes and order round-trip exactly.
  back = convert.to_torch_state_dict(tag, variables)
  assert [(k, list(v.shape)) for k, v in back.items()] == [
      (k, list(s)) for k, s in entry["state_dict"]]
  for key, value in back.items():
    np.testing.assert_array_equal(value, state[key], err_msg=key)

  images = jnp.asarray(recipe_images(seed, entry["input_hw"]))

  # Two programs: the inference one runs again on the updated statistics
  # (one compilation fewer than a single program holding three passes).
  infer = jax.jit(lambda v, x: module.apply(v, x, train=False))
  train = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))
  eval_logits = infer(variables, images)
  train_logits, updates = train(variables, images)
  after = infer({"params": variables["params"], **updates}, images)
  assert_logits_close(eval_logits, logits[f"{tag}/eval_logits"], "inference")
  assert_logits_close(train_logits, logits[f"{tag}/train_logits"], "training")
  assert_logits_close(after, logits[f"{tag}/eval_logits_after_train_forward"],
                      "inference after a training pass")
