"""CIFAR-100, teacher resnet32x4 -> student ShuffleV1.

1. The published teacher (mdistiller's cifar_teachers.tar, its last-epoch
   checkpoint resnet32x4_vanilla/ckpt_epoch_240.pth), converted once:

     python -m rldjax.convert cifar_teachers.tar runs/cifar100/teachers

2. Distil with any method; the teacher defaults to
   runs/cifar100/teachers/resnet32x4/export:

     python -m experiments.train \
         --config=experiments/configs/cifar100_res32x4_shuv1.py:method=rld,seed=0 \
         --workdir=runs/cifar100/res32x4_shuv1/rld/seed0

A teacher trained here instead (its last epoch, not the test-selected best):

  python -m experiments.train --config=experiments/configs/cifar100_teacher.py:arch=resnet32x4 \
      --workdir=runs/cifar100/own_teachers/resnet32x4
  python -m experiments.train \
      --config=experiments/configs/cifar100_res32x4_shuv1.py:method=rld,teacher=runs/cifar100/own_teachers/resnet32x4/export/last \
      --workdir=runs/cifar100/res32x4_shuv1/rld/seed0

method: vanilla, kd, dkd, rld, ldrld, swap_kd, rc, label_revision; stand=True
applies the published logit-standardisation preset. Recipe:
experiments/configs/cifar100.py.
"""
from experiments.configs import cifar100


def get_config(arg: str = "method=rld"):
  return cifar100.build("res32x4_shuv1", cifar100.parse(arg, cifar100.PAIR_ARGS))
