"""What a run optimises, per 1-based epoch: the one source of truth.

:func:`objective` is the batch objective the train step minimises and
:func:`learning_rate` the learning rate the optimiser holds during an epoch.
The train step (``rldjax.train.step``) and the optimiser schedule
(``rldjax.train.optim.schedule``) call these two functions; neither formula is
written anywhere else.

Objective, for the 1-based epoch ``e``:

.. math::
   \\mathcal{L}_e = w_{ce}\\,\\overline{\\mathrm{CE}}(z^s, y)
     + f_e\\,\\big(w_d\\,\\overline{\\ell_{m}}(z^s, z^t, y)
     + w_{kd}\\,\\overline{\\mathrm{KD}_T}(z^s, z^t)\\big),
   \\qquad f_e = \\min(e / W, 1)\\ (1 \\text{ if } W = 0)

with the bars batch means, :math:`\\ell_m` the registered loss of the method
(``rldjax.losses.get(config.method)``) with the hyperparameters
``config.loss``, :math:`w_{ce}` = ``config.ce_weight``, :math:`w_d` =
``config.distill_weight``, :math:`w_{kd}` = ``config.kd_weight`` (an extra
Hinton-KD term at ``config.loss.temperature``; only the published RC recipe
uses it) and :math:`W` = ``config.warmup_epochs``, as the published
DKD/RLD ``forward_train`` computes ``min(epoch / warmup, 1)``.

Learning rate, for the 1-based epoch ``e``, base :math:`\\eta`, milestones
:math:`M` (``optimizer.decay_epochs``), rate :math:`r` and
:math:`n_e = |\\{m \\in M : e > m\\}|` (mdistiller's ``epoch > milestone``):

* ``schedule="multistep"``: :math:`\\eta\\, r^{n_e} \\min(1, e / W_{lr})`
  (no factor when ``optimizer.lr_warmup_epochs`` :math:`W_{lr}` = 0).
* ``schedule="published_ldrld"``: the LDRLD script's warm-up function, which
  writes :math:`\\eta\\,e / W_{lr}` for :math:`e < W_{lr}`, writes nothing
  from :math:`W_{lr}` until the first decay (so the optimiser keeps
  :math:`\\eta (W_{lr}-1)/W_{lr}`, 19/20 of the base for :math:`W_{lr}` = 20),
  and writes :math:`\\eta\\,r^{n_e}` once :math:`n_e > 0`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rldjax import losses
from rldjax.losses import _common as loss_lib


WEIGHT_FIELDS = ("ce_weight", "distill_weight", "kd_weight")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The objective's settings as a hashable value (a jitted step closes over it).

  Attributes:
    method: "vanilla" or a registered loss name.
    hparams: sorted ``(name, value)`` pairs passed to that loss.
    ce_weight: weight of the cross-entropy.
    distill_weight: weight of the method's loss.
    kd_weight: weight of an extra Hinton-KD term (temperature and
      standardisation from ``hparams``).
    warmup_epochs: W of the distillation warm-up factor min(e / W, 1).
  """
  method: str = "vanilla"
  hparams: tuple = ()
  ce_weight: float = 1.0
  distill_weight: float = 0.0
  kd_weight: float = 0.0
  warmup_epochs: int = 0

  @property
  def uses_teacher(self) -> bool:
    return self.method != "vanilla"

  def weights(self) -> dict:
    """``{"ce", "distill", "kd"}``: the objective's weights as float32
    scalars, for a program that takes them at run time (``weights`` of
    :func:`objective_terms`)."""
    return {"ce": np.float32(self.ce_weight), "distill": np.float32(self.distill_weight),
            "kd": np.float32(self.kd_weight)}

  @classmethod
  def from_config(cls, config) -> "Recipe":
    if isinstance(config, Recipe):
      return config
    return cls(method=config.method,
               hparams=tuple(sorted(_plain(config.loss).items())),
               ce_weight=float(config.ce_weight), distill_weight=float(config.distill_weight),
               kd_weight=float(config.get("kd_weight", 0.0)),
               warmup_epochs=int(config.warmup_epochs))


def _plain(mapping) -> dict:
  return mapping.to_dict() if hasattr(mapping, "to_dict") else dict(mapping)


def warmup_factor(warmup_epochs: int, epoch):
  """min(epoch / W, 1) for the 1-based ``epoch`` (1 when W = 0)."""
  if warmup_epochs <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(jnp.asarray(epoch, jnp.float32) / warmup_epochs, 1.0)


def cross_entropy(logits, labels):
  """Per-example cross-entropy in at least float32 (float64 logits stay
  float64). On logits sharded over Explicit mesh axes (the classes too),
  computed on Auto axes as the losses are."""
  return loss_lib.on_auto_axes(
      lambda z, y: optax.softmax_cross_entropy_with_integer_labels(
          z.astype(loss_lib.compute_dtype(z)), y),
      (logits, labels), lambda: loss_lib.batch_spec(logits, logits.ndim - 1))


def _kd_hparams(hparams: Mapping[str, Any]) -> dict:
  return {k: hparams[k] for k in ("temperature", "standardize") if k in hparams}


def objective_terms(config, student_logits, teacher_logits, labels, epoch,
                    weights=None) -> dict:
  """The objective and its parts (batch means, before weights), as a dict.

  Keys: ``total`` (what is minimised), ``ce``, ``distill`` (the method's loss,
  0 for vanilla), ``kd`` (the extra KD term, 0 unless ``kd_weight`` > 0) and
  ``warmup`` (the factor applied to the distillation terms).

  ``weights``: optional ``{"ce", "distill", "kd"}`` scalars (traced values
  allowed) used in place of the recipe's three weights, so that one compiled
  program serves every weighting. Which terms are computed still follows the
  recipe: a term whose recipe weight is 0 is left out, whatever ``weights`` says.
  """
  r = Recipe.from_config(config)
  if weights is None:
    weights = {"ce": r.ce_weight, "distill": r.distill_weight, "kd": r.kd_weight}
  hparams = dict(r.hparams)
  ce = jnp.mean(cross_entropy(student_logits, labels))
  zero = jnp.zeros((), jnp.float32)
  distill, kd = zero, zero
  factor = warmup_factor(r.warmup_epochs, epoch)
  total = weights["ce"] * ce
  if r.uses_teacher:
    if teacher_logits is None:
      raise ValueError(f"method {r.method!r} needs `teacher_logits`")
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    if r.distill_weight:
      distill = jnp.mean(losses.get(r.method)(student_logits, teacher_logits, labels, **hparams))
    if r.kd_weight:
      kd = jnp.mean(losses.kd(student_logits, teacher_logits, **_kd_hparams(hparams)))
    total = total + factor * (weights["distill"] * distill + weights["kd"] * kd)
  return {"total": total, "ce": ce, "distill": distill, "kd": kd, "warmup": factor}


def objective(config, student_logits, teacher_logits, labels, epoch):
  """The batch objective minimised in the 1-based ``epoch`` (module docstring).

  Args:
    config: an experiment config (``rldjax.train.config``) or a :class:`Recipe`.
    student_logits: [B, C] float logits (any float dtype; computed in >= f32).
    teacher_logits: [B, C] teacher logits (treated as constants); ignored, and
      may be None, for ``method="vanilla"``.
    labels: [B] integer labels.
    epoch: 1-based epoch, a Python int or a traced integer.

  Returns:
    A float32 scalar.
  """
  return objective_terms(config, student_logits, teacher_logits, labels, epoch)["total"]


def learning_rate(config, epoch):
  """The learning rate held during the 1-based ``epoch`` (module docstring).

  ``epoch`` may be a Python int or a traced integer; returns a float32 scalar.
  """
  o = config.optimizer
  epoch = jnp.asarray(epoch, jnp.int32)
  milestones = jnp.asarray(sorted(int(m) for m in o.decay_epochs) or [2**30], jnp.int32)
  decays = jnp.sum(epoch > milestones)
  decayed = o.lr * jnp.asarray(o.decay_rate, jnp.float32) ** decays
  w = int(o.lr_warmup_epochs)
  if o.schedule == "multistep":
    if w > 0:
      decayed = decayed * jnp.minimum(1.0, epoch.astype(jnp.float32) / w)
    return decayed.astype(jnp.float32)
  if o.schedule == "published_ldrld":
    if w <= 0:
      raise ValueError("config.optimizer.lr_warmup_epochs: the published_ldrld schedule needs "
                       f"a warm-up length > 0, got {w}")
    # e / W while e < W; afterwards nothing is written and (W - 1) / W stays.
    warm = o.lr * jnp.minimum(epoch, w - 1).astype(jnp.float32) / w
    return jnp.where(decays > 0, decayed, warm).astype(jnp.float32)
  raise ValueError(f"config.optimizer.schedule: unknown schedule {o.schedule!r}")
