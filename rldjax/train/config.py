"""The experiment config: defaults, the published per-method recipes, the
logit-standardisation preset, and validation that names the field before any
data or teacher is loaded.

What a config means is defined by :mod:`rldjax.train.recipe` (the objective and
the learning rate per epoch); this module only fills in the published values.
"""
from __future__ import annotations

import functools
import inspect
import math
import re

import jax
import jax.numpy as jnp
import ml_collections

from rldjax import losses, models
from rldjax.data import augment, synthetic
from rldjax.errors import ConfigError

METHODS = ("vanilla", "kd", "dkd", "rld", "ldrld", "swap_kd", "rc", "label_revision")

# The published CIFAR-100 recipe of each method: the RLD repository's
# configs/cifar100/<method>/*.yaml over mdistiller/engine/cfg.py (RLD with the
# README's --same-t), and the LDRLD README command (-r 1 -a 10.5 -b 7 --kd_T 4,
# k 7) with its training script's learning-rate warm-up. Per-pair values
# (DKD's beta, the LR of light students) are set by the pair configs.
#   ce_weight, distill_weight: CE and the method's loss; kd_weight: an extra
#   Hinton-KD term (RC only); warmup_epochs: the distillation warm-up W of
#   min(epoch / W, 1); optimizer: overrides of the optimiser settings.
METHOD_DEFAULTS = {
    "vanilla": dict(ce_weight=1.0, distill_weight=0.0, kd_weight=0.0, warmup_epochs=0, loss={}),
    "kd": dict(ce_weight=0.1, distill_weight=0.9, kd_weight=0.0, warmup_epochs=0,
               loss=dict(temperature=4.0)),
    "dkd": dict(ce_weight=1.0, distill_weight=1.0, kd_weight=0.0, warmup_epochs=20,
                loss=dict(alpha=1.0, beta=8.0, temperature=4.0)),
    "rld": dict(ce_weight=1.0, distill_weight=1.0, kd_weight=0.0, warmup_epochs=20,
                loss=dict(alpha=1.0, beta=8.0, temperature=4.0, confidence_temperature=4.0)),
    "ldrld": dict(ce_weight=1.0, distill_weight=1.0, kd_weight=0.0, warmup_epochs=0,
                  loss=dict(alpha=10.5, beta=7.0, k=7, temperature=4.0, rank_by="student"),
                  optimizer=dict(schedule="published_ldrld", lr_warmup_epochs=20)),
    # SWAP.py: no cross-entropy, the swapped-teacher KD at weight 1.
    "swap_kd": dict(ce_weight=0.0, distill_weight=1.0, kd_weight=0.0, warmup_epochs=0,
                    loss=dict(temperature=4.0)),
    # RC.py: CE + KD(student || teacher) + 0.1 * the self-distillation term.
    "rc": dict(ce_weight=1.0, distill_weight=0.1, kd_weight=1.0, warmup_epochs=0,
               loss=dict(temperature=4.0)),
    # The published label-revision loss carries its own cross-entropy.
    "label_revision": dict(ce_weight=0.0, distill_weight=1.0, kd_weight=0.0, warmup_epochs=0,
                           loss=dict(lambda1=4.0, lambda2=1.0, eta=0.8)),
}

# The published --logit-stand preset (its README's --base-temp 2 --kd-weight 9).
STAND_TEMPERATURE = 2.0
STAND_WEIGHT = 9.0


def loss_hparams(method: str) -> dict:
  """Every keyword hyperparameter of ``method``'s loss with its signature
  default (``axis`` excluded): what ``config.loss`` may hold."""
  if method == "vanilla":
    return {}
  fn = losses.get(method)
  fn = getattr(fn, "__wrapped__", fn)
  return {p.name: p.default for p in inspect.signature(fn).parameters.values()
          if p.kind == p.KEYWORD_ONLY and p.name != "axis"}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(
      name="cifar100", data_dir="", download=False, train_split="train",
      eval_split="test", kind="cifar", image_size=32, num_classes=100,
      in_memory=True, shuffle_buffer=16_384, host_threads=0))
  # dataset.host_threads: the threads of a streaming pipeline (decoding and
  # augmentation on the host); 0 lets tf.data size its pool to the host's
  # cores. Any value gives the same batches.
  c.student = ml_collections.ConfigDict(dict(tag="cifar/resnet8x4", dtype="float32"))
  # precompute_logits: compute the teacher's logits of the training split once
  # per run and gather them per batch instead of running the teacher in every
  # step; only for in-memory datasets without augmentation (digits). Not in
  # the published code; the same values up to float rounding.
  c.teacher = ml_collections.ConfigDict(dict(tag="cifar/resnet32x4", checkpoint="",
                                             precompute_logits=False))
  c.method = "kd"
  c.ce_weight = 0.1
  c.distill_weight = 0.9
  c.kd_weight = 0.0
  c.warmup_epochs = 0
  c.loss = ml_collections.ConfigDict(dict(temperature=4.0))
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4, weight_decay_mask="all",
      schedule="multistep", decay_epochs=(150, 180, 210), decay_rate=0.1, lr_warmup_epochs=0))
  c.batch_size = 64
  c.eval_batch_size = 512  # evaluation only: any size gives the same result
  c.num_epochs = 240
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, every_epochs=1, keep_latest=2,
                                                 keep_best=1))
  c.log_every_steps = 100
  # 0: evaluate after every epoch (the published code). N > 0: only after the
  # last N epochs; the other epochs' history records hold the training
  # metrics only, and export/best is the best of the evaluated epochs.
  c.eval_last_epochs = 0
  c.steps_per_call = 1  # > 1: that many in-memory steps per device call (a while_loop)
  c.distributed = False
  return c


def apply_method(config: ml_collections.ConfigDict, method: str) -> None:
  """Sets ``method`` with its published weights and loss hyperparameters.

  ``config.loss`` gets every hyperparameter of the method's loss (the
  signature default where the recipe sets none), so each one can be set from
  the command line (``--config.loss.standardize=True``).
  """
  if method not in METHOD_DEFAULTS:
    raise ConfigError(f"config.method: unknown method {method!r}; one of {', '.join(METHODS)}")
  d = METHOD_DEFAULTS[method]
  config.method = method
  for key in ("ce_weight", "distill_weight", "kd_weight", "warmup_epochs"):
    config[key] = d[key]
  hparams = loss_hparams(method)
  hparams.update(d["loss"])
  if hparams.get("confidence_temperature", 0) is None:
    hparams["confidence_temperature"] = hparams["temperature"]
  config.loss = ml_collections.ConfigDict(hparams)
  config.optimizer.update(d.get("optimizer", dict(schedule="multistep", lr_warmup_epochs=0)))


def apply_logit_stand(config: ml_collections.ConfigDict, weight: float = STAND_WEIGHT,
                      temperature: float = STAND_TEMPERATURE) -> None:
  """The published ``--logit-stand`` preset (Sun et al., CVPR 2024), applied
  to a config that already holds its method's recipe.

  Logit standardisation on, and: KD weight = ``weight`` at T =
  ``temperature``; DKD/RLD alpha and beta times ``weight`` at T (RLD's
  confidence temperature too); RC's KD and RC weights times ``weight`` at T.
  The CE weight is unchanged. Other methods have no published preset.
  """
  method = config.method
  if method not in ("kd", "dkd", "rld", "rc"):
    raise ConfigError(f"config string stand=True: the published logit-standardisation preset "
                     f"covers kd, dkd, rld and rc, not {method!r}; set "
                     "--config.loss.standardize=True and the weights yourself")
  config.loss.standardize = True
  config.loss.temperature = temperature
  if method == "kd":
    config.distill_weight = weight
  elif method in ("dkd", "rld"):
    config.loss.alpha = config.loss.alpha * weight
    config.loss.beta = config.loss.beta * weight
    if method == "rld":
      config.loss.confidence_temperature = temperature
  else:  # rc
    config.kd_weight = config.kd_weight * weight
    config.distill_weight = config.distill_weight * weight


def parse_bool(name: str, value: str) -> bool:
  """A config-string boolean (``stand=True``)."""
  lowered = str(value).lower()
  if lowered in ("1", "true", "yes"):
    return True
  if lowered in ("0", "false", "no", ""):
    return False
  raise ConfigError(f"config string {name}={value!r}: expected True or False")


def parse_int(name: str, value) -> int:
  """A config-string integer (``seed=1``, ``epochs=12``)."""
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ConfigError(f"config string {name}={value!r}: expected an int") from None


def _fail(field, message):
  raise ConfigError(f"config.{field}: {message}")


def _field(config, field):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _check_loss(config) -> None:
  """Every ``config.loss`` entry is a hyperparameter of the method's loss and
  has a value the loss accepts (checked abstractly, at the dataset's class
  count); errors name ``config.loss.<name>``."""
  allowed = loss_hparams(config.method)
  for key in config.loss:
    if key not in allowed:
      if not allowed:
        _fail(f"loss.{key}", f"method {config.method!r} has no loss hyperparameters")
      _fail(f"loss.{key}", f"not a hyperparameter of {config.method}; one of {sorted(allowed)}")
  if config.method == "vanilla":
    return
  hparams = config.loss.to_dict()
  num_classes = config.dataset.num_classes
  if isinstance(num_classes, int) and num_classes >= 2:
    error = _loss_error(config.method, tuple(sorted(hparams.items())), num_classes)
    if error is not None:
      name, message = error
      _fail(f"loss.{name}" if name else "loss", message)
  if config.kd_weight and "temperature" not in hparams:
    _fail("kd_weight", f"the extra KD term needs config.loss.temperature, which "
          f"{config.method} does not have")


@functools.lru_cache(maxsize=256)
def _loss_error(method: str, hparams: tuple, num_classes: int):
  """``(hyperparameter name or None, message)`` when the loss rejects these
  hyperparameters (traced abstractly), else None. Cached: the demo validates
  dozens of runs of a few recipes."""
  hparams = dict(hparams)
  logits = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  try:
    jax.eval_shape(lambda s, t, y: losses.get(method)(s, t, y, **hparams), logits, logits, labels)
  except (TypeError, ValueError) as err:
    names = re.findall(r"`(\w+)`", str(err))
    return next((n for n in names if n in hparams), None), str(err)
  return None


def validate(config) -> None:
  """Raises ValueError naming the first invalid field. Touches no files."""
  if config.method not in METHODS:
    _fail("method", f"unknown method {config.method!r}; one of {', '.join(METHODS)}")
  if config.student.tag not in models.tags():
    _fail("student.tag", f"unknown model {config.student.tag!r}")
  if config.student.dtype not in ("float32", "bfloat16"):
    _fail("student.dtype", f"must be float32 or bfloat16, got {config.student.dtype!r}")
  for field in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "dataset.num_classes",
                "dataset.image_size", "checkpoint.every_steps", "checkpoint.every_epochs",
                "checkpoint.keep_latest", "checkpoint.keep_best", "steps_per_call",
                "dataset.shuffle_buffer"):
    value = _field(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      _fail(field, f"must be a positive int, got {value!r}")
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not (
      0 <= config.seed < 2**32):  # a PRNG seed is 32 bits: larger ones would alias smaller ones
    _fail("seed", f"must be an int in [0, 2**32), got {config.seed!r}")
  for field in ("ce_weight", "distill_weight", "kd_weight", "optimizer.weight_decay",
                "optimizer.momentum", "optimizer.decay_rate"):
    value = _field(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 <= value < math.inf):
      _fail(field, f"must be a finite number >= 0, got {value!r}")
  if not config.optimizer.momentum < 1:  # heavy-ball SGD with momentum >= 1 never settles
    _fail("optimizer.momentum", f"must be in [0, 1), got {config.optimizer.momentum!r}")
  for field in ("warmup_epochs", "optimizer.lr_warmup_epochs", "eval_last_epochs",
                "dataset.host_threads"):
    value = _field(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      _fail(field, f"must be an int >= 0, got {value!r}")
  if config.method != "vanilla":
    if config.teacher.tag not in models.tags():
      _fail("teacher.tag", f"unknown model {config.teacher.tag!r}")
    if not config.teacher.checkpoint:
      _fail("teacher.checkpoint", f"method {config.method!r} needs a teacher export directory "
            "(a teacher run's <workdir>/export/last, or `python -m rldjax.convert` output)")
  elif config.distill_weight or config.kd_weight:
    _fail("distill_weight", "method 'vanilla' has no distillation term; set it to 0")
  _check_loss(config)
  lr = config.optimizer.lr
  if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
    _fail("optimizer.lr", f"must be a finite number > 0, got {lr!r}")
  if config.optimizer.schedule not in ("multistep", "published_ldrld"):
    _fail("optimizer.schedule", f"must be 'multistep' or 'published_ldrld', got "
          f"{config.optimizer.schedule!r}")
  if config.optimizer.schedule == "published_ldrld" and config.optimizer.lr_warmup_epochs < 1:
    _fail("optimizer.lr_warmup_epochs", "the published_ldrld schedule needs a warm-up >= 1")
  decay = config.optimizer.decay_epochs
  if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in decay):
    _fail("optimizer.decay_epochs", f"must be non-negative ints, got {decay!r}")
  if config.optimizer.weight_decay_mask not in ("all", "kernels"):
    _fail("optimizer.weight_decay_mask", "must be 'all' or 'kernels'")
  if config.dataset.kind not in ("cifar", "imagenet", "digits"):
    _fail("dataset.kind", f"must be cifar, imagenet or digits, got {config.dataset.kind!r}")
  if synthetic.is_synthetic(config.dataset.name):
    synthetic.check(config.dataset.name, config.dataset.kind)
  if config.dataset.kind == "imagenet" and config.dataset.in_memory:
    _fail("dataset.in_memory", "ImageNet-style datasets stream from disk; set it to False")
  if config.teacher.get("precompute_logits", False) and config.method != "vanilla":
    if config.dataset.kind not in augment.UNAUGMENTED:
      _fail("teacher.precompute_logits", f"dataset kind {config.dataset.kind!r} augments its "
            "training images, so the teacher's logits change every epoch; set it to False")
    if not config.dataset.in_memory:
      _fail("teacher.precompute_logits", "needs dataset.in_memory=True")


def _number(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def published_recipe_table() -> str:
  """The per-method CIFAR-100 recipes of :data:`METHOD_DEFAULTS` as a markdown
  table (the README shows it; a test keeps the two equal)."""
  rows = ["| method | objective | loss hyperparameters | distillation warm-up | learning rate |",
          "|---|---|---|---|---|"]
  for method, d in METHOD_DEFAULTS.items():
    parts = []
    if d["ce_weight"]:
      parts.append(f"{_number(d['ce_weight'])}·CE")
    if d["distill_weight"]:
      parts.append(f"{_number(d['distill_weight'])}·{method}")
    if d["kd_weight"]:
      parts.append(f"{_number(d['kd_weight'])}·kd")
    hparams = ", ".join(f"{k} {_number(v)}" for k, v in d["loss"].items()) or "—"
    warmup = f"min(e/{d['warmup_epochs']}, 1)" if d["warmup_epochs"] else "none"
    opt = d.get("optimizer", {})
    if opt.get("schedule") == "published_ldrld":
      w = opt["lr_warmup_epochs"]
      lr = (f"published_ldrld: e/{w}·base for e < {w}, then {w - 1}/{w}·base until the "
            "first decay, then base·0.1ⁿ")
    else:
      lr = "multistep: base·0.1ⁿ"
    rows.append(f"| {method} | {' + '.join(parts)} | {hparams} | {warmup} | {lr} |")
  return "\n".join(rows)
