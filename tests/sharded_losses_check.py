"""Run in a subprocess with 8 simulated CPU devices (see test_losses_sharded.py).

Every loss on logits sharded over a 2 x 4 mesh of Explicit axes (what
``jax.make_mesh`` makes by default), the class axis sharded too (a vocabulary
split over devices), under ``jit``: the values and the gradients with
respect to both logits equal those of the same arrays on one device, the
per-example losses are sharded as the logits' batch dims and the gradients
as the logits; and so do ``rldjax.train.objective``'s value and gradient.
Prints ``SHARDED OK <loss> <layout>`` per case.
"""
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from rldjax import losses, train  # noqa: E402
from rldjax.train import config as config_lib  # noqa: E402

# Many small programs whose sharding, not their machine code, is under test:
# compiled with less optimisation (tests/conftest.py's
# less_optimized_compilation), 76 s of CPU -> 49 s.
jax.config.update("jax_disable_most_optimizations", True)

LOSSES = {name: losses.get(name) for name in
          ("kd", "dkd", "rld", "ldrld", "swap_kd", "rc", "label_revision")}
LOSSES["chunked(rld)"] = losses.chunked(losses.rld, rows=4)
LOSSES["chunked(ldrld)"] = losses.chunked(losses.ldrld, rows=4)
TAKES_NO_LABELS = ("ldrld", "chunked(ldrld)")

# (logits shape, class axis, logits spec, losses): tokens [batch, length,
# vocab] with batch and vocab sharded, every loss; the class axis in the
# middle with length sharded, one loss of each way in (per_example, the
# batch scalar, chunked).
LAYOUTS = {
    "batch+vocab": ((4, 6, 64), -1, P("data", None, "model"), tuple(LOSSES)),
    "axis1": ((4, 64, 6), 1, P(None, "model", "data"), ("rld", "label_revision",
                                                       "chunked(ldrld)")),
}


def close(got, expected, what):
  """Equal to float32 rounding: the sharded sums over classes add their
  terms in another order (differences of a few ulp of the largest entry)."""
  expected = np.asarray(expected)
  scale = float(np.max(np.abs(expected)))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5 * scale,
                             err_msg=what)


def main():
  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  rng = np.random.default_rng(0)
  for layout, (shape, axis, spec, names) in LAYOUTS.items():
    student = (3 * rng.standard_normal(shape)).astype(np.float32)
    teacher = (3 * rng.standard_normal(shape)).astype(np.float32)
    batch = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
    labels = rng.integers(0, shape[axis], size=batch).astype(np.int32)
    label_spec = P(*(s for i, s in enumerate(spec) if i != axis % len(shape)))
    on_mesh = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
    sharded = (on_mesh(student, spec), on_mesh(teacher, spec), on_mesh(labels, label_spec))
    for name in names:
      loss = LOSSES[name]
      def value(s, t, y, loss=loss, name=name):
        args = (s, t) if name in TAKES_NO_LABELS else (s, t, y)
        return loss(*args, axis=axis)

      def values_and_grads(s, t, y, value=value):
        total = lambda s, t: (value(s, t, y).sum(), value(s, t, y))
        (_, values), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(s, t)
        return values, grads

      expected, expected_grads = jax.jit(values_and_grads)(student, teacher, labels)
      got, got_grads = jax.jit(values_and_grads)(*sharded)
      close(got, expected, f"{name} {layout} value")
      for g, e, which in zip(got_grads, expected_grads, ("student", "teacher")):
        close(g, e, f"{name} {layout} gradient w.r.t. the {which}")
        assert g.sharding.spec == spec, (name, layout, which, g.sharding)
      want = P() if name == "label_revision" else label_spec
      assert got.sharding.spec == want, (name, layout, got.sharding)
      print(f"SHARDED OK {name} {layout}", flush=True)
  check_objective(mesh, rng)


def check_objective(mesh, rng):
  """rldjax.train.objective (its cross-entropy included) on [B, C] logits
  with the batch and the classes sharded, for a user's own training step."""
  student, teacher = ((3 * rng.standard_normal((8, 64))).astype(np.float32) for _ in range(2))
  labels = rng.integers(0, 64, size=8).astype(np.int32)
  spec = P("data", "model")
  sharded = (jax.device_put(student, NamedSharding(mesh, spec)),
             jax.device_put(teacher, NamedSharding(mesh, spec)),
             jax.device_put(labels, NamedSharding(mesh, P("data"))))
  for method in ("vanilla", "rld"):
    config = config_lib.base_config()
    config_lib.apply_method(config, method)
    step = jax.jit(jax.value_and_grad(lambda s, t, y: train.objective(config, s, t, y, 30)))
    expected, expected_grad = step(student, teacher, labels)
    got, got_grad = step(*sharded)
    close(got, expected, f"objective {method} value")
    close(got_grad, expected_grad, f"objective {method} gradient")
    assert got_grad.sharding.spec == spec, (method, got_grad.sharding)
    print(f"SHARDED OK objective({method})", flush=True)


if __name__ == "__main__":
  main()
