"""CIFAR-100 teacher training (vanilla cross-entropy), for every teacher of the
published pairs (resnet56, resnet110, resnet32x4, wrn_40_2, vgg13, ResNet50):

  python -m experiments.train --config=experiments/configs/cifar100_teacher.py:arch=resnet32x4 \
      --workdir=runs/cifar100/own_teachers/resnet32x4

The last epoch is exported to WORKDIR/export/last (a distillation config takes it
with teacher=WORKDIR/export/last), the best test epoch to WORKDIR/export/best.
"""
from experiments.configs import cifar100


def get_config(arg: str = "arch=resnet32x4"):
  args = cifar100.parse(arg)
  return cifar100.teacher_config({"arch": "resnet32x4", **args})
