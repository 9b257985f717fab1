"""Shared by test_training.py (one device) and multidevice_check.py (8 devices):
the in-memory evaluation counts every example once, remainder batch included,
and equals a plain per-example computation."""
import jax
import numpy as np

from experiments.configs import digits as digits_config
from rldjax.data import augment
from rldjax.train import programs as programs_lib


def check_evaluate_arrays(eval_batch_size: int = 16, n: int = 37) -> dict:
  config = digits_config.get_config("method=vanilla,epochs=2")
  config.eval_batch_size = eval_batch_size
  p = programs_lib.build(config, steps_per_epoch=3)
  variables = p.init(jax.random.key(0, impl="rbg"))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  got = jax.device_get(p.evaluate_arrays(variables, images, labels))

  logits = np.asarray(p.student.apply(variables, augment.eval_images(images, "digits"),
                                      train=False), np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  order = np.argsort(-logits, axis=-1)
  want = {"loss": -log_probs[np.arange(n), labels].sum(),
          "top1": (order[:, 0] == labels).sum(),
          "top5": (order[:, :5] == labels[:, None]).any(-1).sum(), "count": n}
  assert float(got["count"]) == n, got
  for key in ("top1", "top5"):
    assert float(got[key]) == want[key], (key, got, want)
  np.testing.assert_allclose(float(got["loss"]), want["loss"], rtol=1e-5)
  return got
