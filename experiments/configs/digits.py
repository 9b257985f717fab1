"""Offline runs on real handwritten digits (rldjax_digits, built from scikit-learn).

  python -m experiments.train --config=experiments/configs/digits.py:method=vanilla,model=teacher \
      --workdir=runs/digits/teacher
  python -m experiments.train \
      --config=experiments/configs/digits.py:method=rld,teacher=runs/digits/teacher/export/last \
      --workdir=runs/digits/rld

Config-string arguments: method, model (teacher: digits/resnet14, student:
digits/resnet8), teacher (export directory), seed, epochs (default 12), val
(True: train on the first 80% of the training split and evaluate on the
other 20%, a validation split for choosing hyperparameters; the test split is
not read). The CIFAR-100 recipe is scaled to the short schedule: decay ×0.1
after 3/4 of the epochs, distillation (and LDRLD learning-rate) warm-up at most
1/8 of them. The demo (experiments/demo.py) sizes the distillation weights
for 10 classes on the validation split.
"""
from experiments.configs.cifar100 import parse
from rldjax.train import config as config_lib

ARGS = ("method", "model", "teacher", "seed", "epochs", "val")
MODELS = {"teacher": "digits/resnet14", "student": "digits/resnet8"}
VALIDATION = ("train[:80%]", "train[80%:]")


def get_config(arg: str = ""):
  args = parse(arg, ARGS)
  c = config_lib.base_config()
  c.dataset.update(name="rldjax_digits", kind="digits", image_size=8, num_classes=10,
                   in_memory=True)
  if config_lib.parse_bool("val", args.get("val", "False")):
    c.dataset.update(train_split=VALIDATION[0], eval_split=VALIDATION[1])
  model = args.get("model", "student")
  if model not in MODELS:
    raise config_lib.ConfigError(f"config string model={model!r}: one of {', '.join(MODELS)}")
  c.student.tag = MODELS[model]
  c.teacher.tag = MODELS["teacher"]
  c.teacher.checkpoint = args.get("teacher", "")
  epochs = config_lib.parse_int("epochs", args.get("epochs", 12))
  config_lib.apply_method(c, args.get("method", "kd"))
  short = max(1, epochs // 8)
  c.warmup_epochs = min(c.warmup_epochs, short)
  if c.optimizer.schedule == "published_ldrld":
    c.optimizer.lr_warmup_epochs = min(c.optimizer.lr_warmup_epochs, short + 1)
  c.num_epochs = epochs
  c.batch_size = 64
  c.optimizer.update(lr=0.05, decay_epochs=(int(epochs * 0.75),), weight_decay=5e-4)
  c.checkpoint.every_steps = 1000
  c.log_every_steps = 1000
  c.seed = config_lib.parse_int("seed", args.get("seed", 0))
  return c
