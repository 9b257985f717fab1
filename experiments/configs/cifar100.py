"""CIFAR-100 distillation: every teacher -> student pair of the papers.

Shared builder for the per-pair config files (``cifar100_<pair>.py``), which
hold the exact launch commands; also usable directly, big_vision style:

  python -m rldjax.convert cifar_teachers.tar runs/cifar100/teachers
  python -m experiments.train \
    --config=experiments/configs/cifar100.py:pair=res32x4_res8x4,method=rld,seed=0 \
    --workdir=runs/cifar100/res32x4_res8x4/rld/seed0

Config-string arguments (comma separated):
  pair      one of PAIRS (default res32x4_res8x4)
  method    vanilla, kd, dkd, rld, ldrld, swap_kd, rc, label_revision (default rld)
  teacher   teacher export directory (default: the published teacher converted
            by ``python -m rldjax.convert cifar_teachers.tar runs/cifar100/teachers``,
            i.e. runs/cifar100/teachers/<teacher arch>/export; a teacher trained
            here: its run's export/last)
  stand     True: the published logit-standardisation preset (--logit-stand)
  seed, data_dir

The published recipe (mdistiller's CIFAR-100 solver): SGD momentum 0.9, batch
64, 240 epochs, LR 0.05 (0.01 for MobileNetV2/ShuffleNet students) decayed ×0.1
after epochs 150, 180, 210, weight decay 5e-4; per method the weights of
``rldjax.train.config.METHOD_DEFAULTS``; DKD's beta per pair as in the RLD
repository's configs/cifar100/dkd/<pair>.yaml; RLD beta 8 for every pair (no
rld/*.yaml sets it); LDRLD with its own LR warm-up (``published_ldrld``).
"""
from rldjax import models
from rldjax.train import config as config_lib

# pair -> (teacher zoo name, student zoo name, DKD beta)
PAIRS = {
    "res56_res20": ("resnet56", "resnet20", 2.0),
    "res110_res20": ("resnet110", "resnet20", 2.0),
    "res110_res32": ("resnet110", "resnet32", 2.0),
    "res32x4_res8x4": ("resnet32x4", "resnet8x4", 8.0),
    "wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2", 6.0),
    "wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1", 6.0),
    "vgg13_vgg8": ("vgg13", "vgg8", 6.0),
    # No RLD-repository config exists for res32x4 -> ShuffleV1: the DKD beta
    # and LR follow the other res32x4 -> light-student pairs.
    "res32x4_shuv1": ("resnet32x4", "ShuffleV1", 8.0),
    "res32x4_shuv2": ("resnet32x4", "ShuffleV2", 8.0),
    "res32x4_wrn16_2": ("resnet32x4", "wrn_16_2", 8.0),
    "res32x4_wrn40_2": ("resnet32x4", "wrn_40_2", 8.0),
    "wrn40_2_res8x4": ("wrn_40_2", "resnet8x4", 6.0),
    "wrn40_2_shuv1": ("wrn_40_2", "ShuffleV1", 8.0),
    "vgg13_mv2": ("vgg13", "MobileNetV2", 6.0),
    "res50_mv2": ("ResNet50", "MobileNetV2", 8.0),
    "wrn40_2_mv2": ("wrn_40_2", "MobileNetV2", 6.0),
}
TEACHERS = sorted({t for t, _, _ in PAIRS.values()})
LIGHT_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
# Where `python -m rldjax.convert cifar_teachers.tar runs/cifar100/teachers`
# puts the published teachers.
PUBLISHED_TEACHERS = "runs/cifar100/teachers"
# Test top-1 (%) the papers report (KD, DKD, RLD, LDRLD), where known.
HEADLINE = {
    "res32x4_res8x4": dict(kd=73.33, dkd=76.32, rld=76.64, ldrld=77.20),
    "vgg13_vgg8": dict(kd=72.98, dkd=74.68, rld=74.93, ldrld=75.06),
    "res56_res20": dict(kd=70.66, dkd=71.97, rld=72.00, ldrld=72.20),
}
ARGS = ("pair", "method", "teacher", "stand", "seed", "data_dir", "arch")
PAIR_ARGS = ("method", "teacher", "stand", "seed", "data_dir")


def parse(arg: str, allowed=ARGS) -> dict:
  """``"a=1,b=2"`` -> {"a": "1", "b": "2"}; an unknown or malformed item raises."""
  out = {}
  for item in (arg or "").split(","):
    if not item:
      continue
    if "=" not in item:
      raise config_lib.ConfigError(f"config string item {item!r} is not name=value")
    key, value = item.split("=", 1)
    if key not in allowed:
      raise config_lib.ConfigError(f"config string: unknown argument {key!r}; "
                                   f"one of {', '.join(allowed)}")
    if key in out:
      raise config_lib.ConfigError(f"config string: {key} given twice ({key}={out[key]!r}, "
                                   f"{key}={value!r})")
    out[key] = value
  return out


TEACHER_ARGS = ("arch", "seed", "data_dir")


def teacher_tag(family: str, args: dict) -> str:
  """The model tag of ``arch=`` (a teacher's vanilla training run), checking
  that the config string holds nothing that only a distillation run uses."""
  extra = [k for k in args if k not in TEACHER_ARGS]
  if extra:
    raise config_lib.ConfigError(
        f"config string: arch= trains a teacher with vanilla CE; {', '.join(extra)} "
        f"cannot go with it (arguments of a teacher run: {', '.join(TEACHER_ARGS)})")
  tag = f"{family}/{args['arch']}"
  if tag not in models.tags():
    known = [t.split("/", 1)[1] for t in models.tags() if t.startswith(family + "/")]
    raise config_lib.ConfigError(f"config string arch={args['arch']!r}: one of {', '.join(known)}")
  return tag


def teacher_export(arch: str) -> str:
  return f"{PUBLISHED_TEACHERS}/{arch}/export"


def cifar_base(arch: str, seed: int = 0, data_dir: str = ""):
  c = config_lib.base_config()
  c.student.tag = f"cifar/{arch}"
  c.dataset.data_dir = data_dir
  c.seed = seed
  c.optimizer.lr = 0.01 if arch in LIGHT_STUDENTS else 0.05
  c.checkpoint.every_steps = 2000
  return c


def build(pair: str, args: dict):
  if pair not in PAIRS:
    raise config_lib.ConfigError(f"config string pair={pair!r}: one of {', '.join(PAIRS)}")
  teacher, student, dkd_beta = PAIRS[pair]
  seed = config_lib.parse_int("seed", args.get("seed", 0))
  c = cifar_base(student, seed, args.get("data_dir", ""))
  c.teacher.tag = f"cifar/{teacher}"
  c.teacher.checkpoint = args.get("teacher", teacher_export(teacher))
  method = args.get("method", "rld")
  config_lib.apply_method(c, method)
  if method == "dkd":
    c.loss.beta = dkd_beta
  if config_lib.parse_bool("stand", args.get("stand", "False")):
    config_lib.apply_logit_stand(c)
  return c


def teacher_config(args: dict):
  """Vanilla training of the teacher ``args["arch"]`` (same recipe)."""
  arch = teacher_tag("cifar", args).split("/", 1)[1]
  seed = config_lib.parse_int("seed", args.get("seed", 0))
  c = cifar_base(arch, seed, args.get("data_dir", ""))
  config_lib.apply_method(c, "vanilla")
  return c


def get_config(arg: str = "pair=res32x4_res8x4,method=rld"):
  args = parse(arg)
  if "arch" in args:
    return teacher_config(args)
  return build(args.get("pair", "res32x4_res8x4"), args)
