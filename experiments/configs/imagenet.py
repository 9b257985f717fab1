"""ImageNet-1k distillation: ResNet34 -> ResNet18 and ResNet50 -> MobileNetV1.

The published teachers are torchvision's ImageNet weights, converted once:

  python -m rldjax.convert --arch imagenet/ResNet34 resnet34-b627a593.pth runs/imagenet/teachers/ResNet34/export
  python -m rldjax.convert --arch imagenet/ResNet50 resnet50-0676ba61.pth runs/imagenet/teachers/ResNet50/export

then (the teacher defaults to runs/imagenet/teachers/<arch>/export):

  python -m experiments.train \
    --config=experiments/configs/imagenet.py:pair=res34_res18,method=rld \
    --config.dataset.data_dir=$TFDS_DATA_DIR --workdir=runs/imagenet/res34_res18/rld

The papers' top-1 (%): ResNet34 -> ResNet18 KD 71.03, DKD 71.70, RLD 71.91,
LDRLD 71.88; ResNet50 -> MobileNetV1 KD 70.50, DKD 72.05, RLD 72.75, LDRLD 73.12.

imagenet2012 needs a manual download into DATA_DIR/downloads/manual and
`tfds build imagenet2012 --data_dir=DATA_DIR`. Recipe (the RLD repository's
configs/imagenet/<pair>/<method>.yaml over mdistiller's cfg.py): batch 512,
100 epochs, LR 0.2 decayed ×0.1 after epochs 30, 60, 90, weight decay 1e-4;
T 1 everywhere; KD CE/KD weights 1.0/0.5 (R34 -> R18) and 0.5/0.5 (R50 ->
MV1); DKD/RLD alpha 1, beta 0.5 (R34 -> R18) or 2.0 (R50 -> MV1), warm-up
factor 1 from the first epoch; swap_kd and rc as on CIFAR-100 with T 1. The
RLD repository has no LDRLD ImageNet config: ``method=ldrld`` uses the LDRLD
loss weights with T 1 and this schedule (not a published recipe).
A teacher trained here: ``imagenet.py:arch=ResNet34``, then
``teacher=<its workdir>/export/last``.
"""
from experiments.configs.cifar100 import parse, teacher_tag
from rldjax.train import config as config_lib

# pair -> (teacher, student, KD's CE weight, DKD/RLD beta)
PAIRS = {"res34_res18": ("ResNet34", "ResNet18", 1.0, 0.5),
         "res50_mv1": ("ResNet50", "MobileNetV1", 0.5, 2.0)}
HEADLINE = {
    "res34_res18": dict(kd=71.03, dkd=71.70, rld=71.91, ldrld=71.88),
    "res50_mv1": dict(kd=70.50, dkd=72.05, rld=72.75, ldrld=73.12),
}
ARGS = ("pair", "method", "teacher", "stand", "seed", "data_dir", "arch")
PUBLISHED_TEACHERS = "runs/imagenet/teachers"


def base(arch, args):
  c = config_lib.base_config()
  c.student.tag = f"imagenet/{arch}"
  c.dataset.update(name="imagenet2012", kind="imagenet", image_size=224, num_classes=1000,
                   eval_split="validation", in_memory=False, shuffle_buffer=16_384,
                   data_dir=args.get("data_dir", ""))
  c.seed = config_lib.parse_int("seed", args.get("seed", 0))
  c.batch_size = 512
  c.num_epochs = 100
  c.optimizer.update(lr=0.2, decay_epochs=(30, 60, 90), weight_decay=1e-4)
  c.checkpoint.every_steps = 1000
  return c


def get_config(arg: str = "pair=res34_res18,method=rld"):
  args = parse(arg, ARGS)
  if "arch" in args:
    c = base(teacher_tag("imagenet", args).split("/", 1)[1], args)
    config_lib.apply_method(c, "vanilla")
    return c
  pair = args.get("pair", "res34_res18")
  if pair not in PAIRS:
    raise config_lib.ConfigError(f"config string pair={pair!r}: one of {', '.join(PAIRS)}")
  teacher, student, kd_ce_weight, beta = PAIRS[pair]
  c = base(student, args)
  c.teacher.tag = f"imagenet/{teacher}"
  c.teacher.checkpoint = args.get("teacher", f"{PUBLISHED_TEACHERS}/{teacher}/export")
  method = args.get("method", "rld")
  config_lib.apply_method(c, method)
  if "temperature" in c.loss:
    c.loss.temperature = 1.0
  if method == "kd":
    c.ce_weight, c.distill_weight = kd_ce_weight, 0.5
  elif method in ("dkd", "rld"):
    c.loss.update(alpha=1.0, beta=beta)
    c.warmup_epochs = 1  # cfg WARMUP 1: min(epoch / 1, 1) = 1 from the first epoch
    if method == "rld":
      c.loss.confidence_temperature = 1.0
  elif method == "ldrld":
    c.optimizer.update(schedule="multistep", lr_warmup_epochs=0)
  if config_lib.parse_bool("stand", args.get("stand", "False")):
    config_lib.apply_logit_stand(c)
  return c
